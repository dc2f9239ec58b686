import Foundation
import Shared
import XCTest

/// TLS to the ingestor with a real HTTPS server on loopback (dev/ingestor.py with
/// --tls-cert/--tls-key/--tls-client-ca) and a throwaway CA: the right CA works, another fails
/// with a clear transport error, mutual TLS works when the client certificate is given and fails
/// when it is not; and a worker publishes over mutual TLS end to end.
final class IngestorTLSTests: IntegrationTestCase {
    private var certificates: TestCertificates!

    override func setUpWithError() throws {
        try super.setUpWithError()
        certificates = try TestCertificates.make(in: workDirectory.appendingPathComponent("pki"))
    }

    private var trusting: HTTPTLSOptions { HTTPTLSOptions(caFile: certificates.caCertificate) }
    private var withClientCertificate: HTTPTLSOptions {
        HTTPTLSOptions(caFile: certificates.caCertificate, clientCertificate: certificates.clientCertificate, clientKey: certificates.clientKey)
    }

    private func serverTLS(requireClientCertificate: Bool) -> Ingestor.TLS {
        Ingestor.TLS(certificate: certificates.serverCertificate, key: certificates.serverKey,
                     clientCA: requireClientCertificate ? certificates.caCertificate : nil,
                     client: requireClientCertificate ? withClientCertificate : trusting)
    }

    private func publish(_ ingestor: Ingestor, _ tls: HTTPTLSOptions) -> Result<HTTPResponse, HTTPTransportError> {
        let client = HTTPClient(timeoutMilliseconds: 10_000, connectTimeoutMilliseconds: 5_000, maxConnections: 1, tls: tls)
        return client.perform(HTTPRequest(url: ingestor.baseURL + "/api/v1/things", headers: [("Content-Type", "application/json")],
                                          body: Array(#"{"primary_key":"1"}"#.utf8)))
    }

    func testTheRightCA_publishes() throws {
        let ingestor = try startIngestor(tls: serverTLS(requireClientCertificate: false))
        XCTAssertTrue(ingestor.baseURL.hasPrefix("https://localhost:"))
        XCTAssertEqual(try publish(ingestor, trusting).get().status, 200)
        XCTAssertEqual(try ingestor.requests().count, 1)
    }

    func testAnotherCA_orTheSystemStore_failWithAClearTransportError() throws {
        let ingestor = try startIngestor(tls: serverTLS(requireClientCertificate: false))
        for (name, options) in [("another CA", HTTPTLSOptions(caFile: certificates.otherCACertificate)), ("the system store", HTTPTLSOptions())] {
            guard case .failure(let error) = publish(ingestor, options) else { XCTFail("\(name): must fail"); continue }
            XCTAssertTrue(error.isTLSFailure, "\(name): \(error)")
            XCTAssertEqual(error.code, 60, "CURLE_PEER_FAILED_VERIFICATION, \(name): \(error)")
            XCTAssertTrue(error.description.contains("certificate"), "\(name): \(error)")
        }
        XCTAssertEqual(try ingestor.requests().count, 0)
    }

    func testAnotherHostName_fails() throws {
        let ingestor = try startIngestor(tls: serverTLS(requireClientCertificate: false))
        let client = HTTPClient(timeoutMilliseconds: 10_000, connectTimeoutMilliseconds: 5_000, maxConnections: 1, tls: trusting)
        // The certificate names localhost, not 127.0.0.1.
        let result = client.perform(HTTPRequest(url: "https://127.0.0.1:\(ingestor.port)/api/v1/things", body: Array("{}".utf8)))
        guard case .failure(let error) = result else { return XCTFail("must fail: \(result)") }
        XCTAssertTrue(error.isTLSFailure, "\(error)")
        XCTAssertTrue(error.description.contains("127.0.0.1"), "\(error)")
    }

    func testMutualTLS_requiredAndGiven_publishes_requiredAndMissingOrFromAnotherCA_fails() throws {
        let ingestor = try startIngestor(tls: serverTLS(requireClientCertificate: true))
        XCTAssertEqual(try publish(ingestor, withClientCertificate).get().status, 200)

        guard case .failure(let missing) = publish(ingestor, trusting) else { return XCTFail("no client certificate: must fail") }
        XCTAssertTrue(missing.description.contains("if the server requires a client certificate, set ingestor.client_cert")
                      || missing.description.contains("certificate required"), "\(missing)")

        let stranger = HTTPTLSOptions(caFile: certificates.caCertificate, clientCertificate: certificates.strangerCertificate,
                                      clientKey: certificates.strangerKey)
        guard case .failure(let refused) = publish(ingestor, stranger) else { return XCTFail("a client certificate from another CA: must fail") }
        XCTAssertTrue(refused.description.contains("the server may have refused the client certificate of ingestor.client_cert")
                      || refused.description.contains("unknown ca"), "\(refused)")
        XCTAssertEqual(try ingestor.requests().count, 1, "only the request with the right client certificate arrived")
    }

    func testAWorker_publishesOverMutualTLS() throws {
        let devices = TestTables.devices
        let p = try startPipeline(schemaSQL: try TestTables.devicesSQL(), tables: [devices],
                                  ingestorTLS: serverTLS(requireClientCertificate: true)) { config in
            config.ingestor.caFile = self.certificates.caCertificate
            config.ingestor.clientCert = self.certificates.clientCertificate
            config.ingestor.clientKey = self.certificates.clientKey
            config.ingestor.authToken = "token-over-tls"
        }
        XCTAssertTrue(p.config.ingestor.baseURL.hasPrefix("https://"))
        try p.database.execute("INSERT INTO devices VALUES (1, 'one', 'v1', '2026-11-28 10:00:00+00')")
        let requests = try waitForRequests(p.ingestor, count: 1)
        XCTAssertEqual(requests.first?.status, 200)
        XCTAssertEqual(requests.first?.header("Authorization"), "Bearer token-over-tls")
        try waitUntilTrackingTableIsEmpty(p.database, devices)
    }
}
