#include <curl/curl.h>

/* curl_easy_setopt and friends are variadic: Swift cannot call them directly. */
static inline CURLcode curlx_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode curlx_setopt_ptr(CURL *h, CURLoption o, const void *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode curlx_setopt_off(CURL *h, CURLoption o, curl_off_t v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode curlx_setopt_write(CURL *h, CURLoption o, size_t (*fn)(char *, size_t, size_t, void *)) { return curl_easy_setopt(h, o, fn); }
static inline CURLcode curlx_getinfo_long(CURL *h, CURLINFO i, long *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLMcode curlx_multi_setopt_long(CURLM *m, CURLMoption o, long v) { return curl_multi_setopt(m, o, v); }
