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
}
