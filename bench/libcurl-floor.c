// The floor of libcurl's per-request cost, for bench/run's limits: N POSTs of the worker's size
// and headers over keep-alive connections, F in flight, through curl_multi (the worker's client
// loop without the worker). Prints user and system CPU per request.
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
static size_t sink(char *p, size_t s, size_t n, void *u) { (void)p; (void)u; return s * n; }
int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: floor URL N F [bodybytes]\n"); return 2; }
    const char *url = argv[1]; long n = atol(argv[2]); int f = atoi(argv[3]); int bodyBytes = argc > 4 ? atoi(argv[4]) : 330;
    char *body = malloc(bodyBytes); memset(body, 'x', bodyBytes);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)f + 4);
    CURL **h = calloc(f, sizeof(CURL *)); struct curl_slist **lists = calloc(f, sizeof(*lists));
    for (int i = 0; i < f; i++) {
        h[i] = curl_easy_init();
        curl_easy_setopt(h[i], CURLOPT_WRITEFUNCTION, sink); curl_easy_setopt(h[i], CURLOPT_HEADERFUNCTION, sink);
        curl_easy_setopt(h[i], CURLOPT_NOSIGNAL, 1L); curl_easy_setopt(h[i], CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(h[i], CURLOPT_PROXY, ""); curl_easy_setopt(h[i], CURLOPT_NOPROXY, "");
    }
    long started = 0, done = 0; char key[64];
    for (int i = 0; i < f && started < n; i++, started++) {
        struct curl_slist *l = NULL;
        snprintf(key, sizeof key, "Idempotency-Key: public.items:1:%ld.0123456789abcdef", started);
        l = curl_slist_append(l, "Content-Type: application/json"); l = curl_slist_append(l, key);
        l = curl_slist_append(l, "User-Agent: atomic-data-publisher/1.0"); l = curl_slist_append(l, "X-Publisher-Instance: vm");
        l = curl_slist_append(l, "Expect:"); lists[i] = l;
        curl_easy_setopt(h[i], CURLOPT_URL, url); curl_easy_setopt(h[i], CURLOPT_HTTPHEADER, l);
        curl_easy_setopt(h[i], CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bodyBytes); curl_easy_setopt(h[i], CURLOPT_COPYPOSTFIELDS, body);
        curl_multi_add_handle(m, h[i]);
    }
    while (done < n) {
        int running = 0, q = 0, fds = 0;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(m, &q))) {
            if (msg->msg != CURLMSG_DONE) continue;
            CURL *e = msg->easy_handle; long code = 0;
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
            if (msg->data.result != CURLE_OK || code / 100 != 2) { fprintf(stderr, "failed: %d %ld\n", msg->data.result, code); return 1; }
            done++;
            curl_multi_remove_handle(m, e);
            int i = 0; while (h[i] != e) i++;
            if (started < n) {
                curl_slist_free_all(lists[i]);
                struct curl_slist *l = NULL;
                snprintf(key, sizeof key, "Idempotency-Key: public.items:1:%ld.0123456789abcdef", started);
                l = curl_slist_append(l, "Content-Type: application/json"); l = curl_slist_append(l, key);
                l = curl_slist_append(l, "User-Agent: atomic-data-publisher/1.0"); l = curl_slist_append(l, "X-Publisher-Instance: vm");
                l = curl_slist_append(l, "Expect:"); lists[i] = l;
                curl_easy_setopt(e, CURLOPT_URL, url); curl_easy_setopt(e, CURLOPT_HTTPHEADER, l);
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bodyBytes); curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
                curl_multi_add_handle(m, e); started++;
            }
        }
        if (done < n) curl_multi_poll(m, NULL, 0, 100, &fds);
    }
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    double user = ru.ru_utime.tv_sec * 1e6 + ru.ru_utime.tv_usec, sys = ru.ru_stime.tv_sec * 1e6 + ru.ru_stime.tv_usec;
    printf("requests %ld  user %.1f us/request  sys %.1f us/request  total %.1f\n", n, user / n, sys / n, (user + sys) / n);
    return 0;
}
