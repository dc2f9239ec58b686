import Foundation
import Shared
import XCTest

/// Shared.HTTPClient against a real HTTP server (dev/ingestor.py): one client, reused handles.
final class HTTPClientTests: IntegrationTestCase {
    func testGetAfterDeleteOnTheSameClient_isSentAsGet() throws {
        let ingestor = try startIngestor()
        let client = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000, maxConnections: 1)
        let base = ingestor.baseURL
        XCTAssertEqual(try client.perform(HTTPRequest(url: base + "/_requests", method: "DELETE")).get().status, 200)

        // The easy handle that just sent the DELETE is reused for this GET.
        let listed = try client.perform(HTTPRequest(url: base + "/_requests", method: "GET")).get()
        XCTAssertEqual(listed.status, 200)
        XCTAssertEqual(try JSON(parsing: Data(listed.body)), [],
                       "GET /_requests lists the (no) publishes; an answer of {\"ok\": true} means the GET went out as a DELETE")

        let publish = HTTPRequest(url: base + "/api/v1/things", headers: [("Content-Type", "application/json")],
                                  body: Array(#"{"primary_key":"1"}"#.utf8))
        XCTAssertEqual(try client.perform(publish).get().status, 200)
        XCTAssertEqual(try client.perform(HTTPRequest(url: base + "/_health", method: "DELETE")).get().status, 404)
        XCTAssertEqual(try client.perform(HTTPRequest(url: base + "/_requests", method: "GET")).get().status, 200)
        XCTAssertEqual(try ingestor.requests().count, 1, "a GET must not delete the recorded requests")
    }

    /// The client's handles keep their shared options between requests and reset what a request
    /// sets: one request's headers and body never reach the next request on the same handle.
    func testHeadersAndBodyOfOneRequest_neverReachTheNextOnTheSameHandle() throws {
        let ingestor = try startIngestor()
        let client = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000, maxConnections: 1)
        let first = HTTPRequest(url: ingestor.baseURL + "/api/v1/a", headers: [("Content-Type", "application/json"), ("X-Only-First", "1")],
                                body: Array(#"{"primary_key":"a","long":"\#(String(repeating: "x", count: 500))"}"#.utf8))
        let second = HTTPRequest(url: ingestor.baseURL + "/api/v1/b", headers: [("Content-Type", "application/json")],
                                 body: Array(#"{"primary_key":"b"}"#.utf8))
        XCTAssertEqual(try client.perform(first).get().status, 200)
        XCTAssertEqual(try client.perform(second).get().status, 200)
        let received = try ingestor.requests()
        XCTAssertEqual(received.map(\.path), ["/api/v1/a", "/api/v1/b"])
        XCTAssertEqual(received.first?.header("X-Only-First"), "1")
        XCTAssertNil(received.last?.header("X-Only-First"), "\(received.last?.headers ?? [:])")
        XCTAssertEqual(received.last?.body, ["primary_key": "b"], "the second body whole, nothing of the first")
    }

    /// A handle keeps a fixed header block's lines between requests that carry the same block,
    /// and drops them for one that carries another block or none; a request's own headers go
    /// with it only.
    func testFixedHeaderBlocks_stayWhileTheSameBlockIsSent_ownHeadersNeverReachTheNextRequest() throws {
        let ingestor = try startIngestor()
        let client = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000, maxConnections: 1)
        let a = HTTPHeaderBlock([("Content-Type", "application/json"), ("X-Fixed-A", "a")])
        let b = HTTPHeaderBlock([("Content-Type", "application/json"), ("X-Fixed-B", "b")])
        let url = ingestor.baseURL + "/api/v1/items"
        let requests = [
            HTTPRequest(url: url, fixedHeaders: a, headers: [("X-Own", "1")], body: Array(#"{"primary_key":"1"}"#.utf8)),
            HTTPRequest(url: url, fixedHeaders: a, headers: [("X-Own-Two", "2"), ("X-Own-Three", "3")], body: Array(#"{"primary_key":"2"}"#.utf8)),
            HTTPRequest(url: url, fixedHeaders: a, headers: [], body: Array(#"{"primary_key":"3"}"#.utf8)),
            HTTPRequest(url: url, fixedHeaders: b, headers: [("X-Own", "4")], body: Array(#"{"primary_key":"4"}"#.utf8)),
            HTTPRequest(url: url, headers: [("Content-Type", "application/json")], body: Array(#"{"primary_key":"5"}"#.utf8)),
        ]
        for request in requests { XCTAssertEqual(try client.perform(request).get().status, 200) }
        let received = try ingestor.requests()
        XCTAssertEqual(received.map { $0.body["primary_key"]?.string ?? "?" }, ["1", "2", "3", "4", "5"])
        let seen = received.map { r in ["x-fixed-a", "x-fixed-b", "x-own", "x-own-two", "x-own-three"].filter { r.header($0) != nil } }
        XCTAssertEqual(seen, [["x-fixed-a", "x-own"], ["x-fixed-a", "x-own-two", "x-own-three"], ["x-fixed-a"], ["x-fixed-b", "x-own"], []])
        XCTAssertEqual(received[3].header("X-Own"), "4")
        XCTAssertTrue(received.allSatisfy { $0.header("Expect") == nil && $0.header("Content-Type") == "application/json" }, "\(received.map(\.headers))")
    }

    /// The proxy variables are read once (ProxySettings), the way libcurl reads them per transfer:
    /// http_proxy is used, no_proxy exempts a host, and HTTP_PROXY is ignored as libcurl ignores it.
    func testProxyVariables_readOnce_areHonouredLikeLibcurlDoes() throws {
        let ingestor = try startIngestor()
        let port = ingestor.baseURL.split(separator: ":").last.map(String.init) ?? ""
        let body = Array(#"{"primary_key":"p"}"#.utf8)

        // Through the proxy: a host that does not resolve (.invalid) is only reachable through it.
        let proxied = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000,
                                 proxy: ProxySettings(environment: ["http_proxy": "http://127.0.0.1:\(port)"]))
        let viaProxy = proxied.perform(HTTPRequest(url: "http://adp-proxied.invalid/api/v1/p", headers: [("Content-Type", "application/json")], body: body))
        XCTAssertEqual(try viaProxy.get().status, 200, "\(viaProxy)")
        let received = try ingestor.requests()
        XCTAssertEqual(received.count, 1)
        XCTAssertEqual(received.first?.header("Host"), "adp-proxied.invalid", "\(received.first?.headers ?? [:])")
        XCTAssertTrue(received.first?.path.hasSuffix("/api/v1/p") ?? false, received.first?.path ?? "")

        // A dead proxy, exempted by no_proxy; and HTTP_PROXY, never used for http: direct.
        for environment in [["http_proxy": "http://127.0.0.1:1", "no_proxy": "127.0.0.1"], ["HTTP_PROXY": "http://127.0.0.1:1"]] {
            let direct = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000, proxy: ProxySettings(environment: environment))
            let result = direct.perform(HTTPRequest(url: ingestor.baseURL + "/api/v1/d", headers: [("Content-Type", "application/json")], body: body))
            XCTAssertEqual(try result.get().status, 200, "\(environment): \(result)")
        }
        // The dead proxy when nothing exempts the host: the request fails, it is not sent directly.
        let dead = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000,
                              proxy: ProxySettings(environment: ["all_proxy": "http://127.0.0.1:1"]))
        XCTAssertThrowsError(try dead.perform(HTTPRequest(url: ingestor.baseURL + "/api/v1/x", body: body)).get())
        XCTAssertEqual(try ingestor.requests().map(\.path).filter { $0.hasSuffix("/api/v1/d") }.count, 2)
        XCTAssertFalse(try ingestor.requests().contains { $0.path.hasSuffix("/api/v1/x") })
    }

    func testProxySettings_followLibcurlsOrderOfVariables() {
        XCTAssertEqual(ProxySettings(environment: [:]), ProxySettings(environment: ["HTTP_PROXY": "http://p:1"]))
        let all = ProxySettings(environment: ["ALL_PROXY": "http://a:1", "HTTPS_PROXY": "http://s:1", "NO_PROXY": "x"])
        XCTAssertEqual([all.http, all.https, all.noProxy], ["http://a:1", "http://s:1", "x"])
        let lower = ProxySettings(environment: ["all_proxy": "http://a:2", "ALL_PROXY": "http://a:1", "https_proxy": "", "HTTPS_PROXY": "http://s:1",
                                                "no_proxy": "y", "NO_PROXY": "x"])
        // An empty variable is set: https_proxy= turns the proxy off for https.
        XCTAssertEqual([lower.http, lower.https, lower.noProxy], ["http://a:2", "", "y"])
    }

    func testPostAfterGetOnTheSameClient_sendsItsBody() throws {
        let ingestor = try startIngestor()
        let client = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000, maxConnections: 1)
        XCTAssertEqual(try client.perform(HTTPRequest(url: ingestor.baseURL + "/_health", method: "GET")).get().status, 200)
        let post = HTTPRequest(url: ingestor.baseURL + "/api/v1/things", headers: [("Content-Type", "application/json")],
                               body: Array(#"{"primary_key":"k","n":1}"#.utf8))
        XCTAssertEqual(try client.perform(post).get().status, 200)
        let received = try ingestor.requests()
        XCTAssertEqual(received.count, 1)
        XCTAssertEqual(received.first?.body, ["primary_key": "k", "n": 1])
        XCTAssertEqual(received.first?.path, "/api/v1/things")
    }

    /// A request whose setup fails (libcurl refuses a URL longer than CURL_MAX_INPUT_LENGTH,
    /// 8,000,000 bytes, at setopt time) or whose URL is malformed ends with an error that
    /// `onComplete` sees, among good requests that still go through; it is never sent. Before,
    /// the URL's setopt result was overwritten and the reused handle sent it to the previous URL.
    func testASetupFailureAndAMalformedURLAmongGoodRequests_eachEndWithOneReportedResult_andAreNeverSent() throws {
        let ingestor = try startIngestor()
        let client = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000, maxConnections: 1)
        let body = Array(#"{"primary_key":"1"}"#.utf8)
        let good = HTTPRequest(url: ingestor.baseURL + "/api/v1/things", headers: [("Content-Type", "application/json")], body: body)
        let tooLong = HTTPRequest(url: ingestor.baseURL + "/api/v1/things?" + String(repeating: "a", count: 8_000_001), body: body)
        let malformed = HTTPRequest(url: "http://[::1", body: body)
        var reported: [Int] = []
        let results = client.perform([good, tooLong, malformed, good], maxConcurrent: 1, onComplete: { index, _ in
            reported.append(index)
            return true
        })
        XCTAssertEqual(reported.sorted(), [0, 1, 2, 3], "every request is reported to onComplete exactly once")
        XCTAssertEqual(try results[0].get().status, 200)
        XCTAssertEqual(try results[3].get().status, 200)
        guard case .failure(let setupError) = results[1] else { return XCTFail("the too-long URL must fail: \(results[1])") }
        XCTAssertEqual(setupError.code, 43, "CURLE_BAD_FUNCTION_ARGUMENT from CURLOPT_URL: \(setupError)")
        XCTAssertTrue(setupError.message.contains("CURLOPT_URL"), "\(setupError)")
        guard case .failure = results[2] else { return XCTFail("the malformed URL must fail: \(results[2])") }
        XCTAssertEqual(try ingestor.requests().count, 2, "only the good requests reached the ingestor")
    }

    /// The same with several in flight: the loop ends (it does not wait for a request that was never started).
    func testOnlyFailingRequests_withSeveralInFlight_endPromptly() throws {
        let client = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000, maxConnections: 4)
        let tooLong = HTTPRequest(url: "http://127.0.0.1:9/" + String(repeating: "a", count: 8_000_001))
        let started = Date()
        var reported = 0
        let results = client.perform(Array(repeating: tooLong, count: 5), maxConcurrent: 3, onComplete: { _, _ in
            reported += 1
            return true
        })
        XCTAssertEqual(reported, 5)
        XCTAssertEqual(results.filter { if case .failure(let e) = $0 { return e.code == 43 } else { return false } }.count, 5, "\(results)")
        XCTAssertLessThan(Date().timeIntervalSince(started), 5, "no spinning until a timeout")
    }

    /// A 10 MB answer: 64 KiB kept, the rest read and dropped, and the connection reused afterwards.
    func testATenMegabyteResponse_keeps64KiB_andTheConnectionIsReused() throws {
        let ingestor = try startIngestor()
        let client = HTTPClient(timeoutMilliseconds: 30_000, connectTimeoutMilliseconds: 2_000, maxConnections: 1)
        let big = try client.perform(HTTPRequest(url: ingestor.baseURL + "/_bytes?n=\(10 * 1024 * 1024)", method: "GET")).get()
        XCTAssertEqual(big.status, 200)
        XCTAssertEqual(big.body.count, 64 * 1024)
        XCTAssertEqual(client.maximumBodyBytes, HTTPClient.defaultMaximumBodyBytes)
        XCTAssertTrue(big.bodyTruncated)
        XCTAssertTrue(big.body.allSatisfy { $0 == UInt8(ascii: "x") })
        let next = try client.perform(HTTPRequest(url: ingestor.baseURL + "/_health", method: "GET")).get()
        XCTAssertEqual(next.status, 200)
        XCTAssertFalse(next.bodyTruncated)
        XCTAssertNotNil(big.headers["x-client-port"])
        XCTAssertEqual(next.headers["x-client-port"], big.headers["x-client-port"], "the drained connection was reused")
    }
}
