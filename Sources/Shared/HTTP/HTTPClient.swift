// The one file that imports libcurl. Everything else sees `HTTPClient`, `HTTPRequest`,
// `HTTPResponse`, `HTTPTLSOptions` and `HTTPTransportError`.
//
// Invariants:
// - One HTTPClient per owner (a worker's loop); its multi handle and a pool of easy handles are
//   reused across batches, so keep-alive connections (kept by the multi handle) survive from one
//   batch to the next. A pooled easy handle is `curl_easy_reset` before each use, so no option of
//   an earlier request (method, URL, body) can leak into the next one.
// - Every request of a `perform` call ends with exactly one result: a response, or a transport
//   error for a request whose setup failed, that libcurl refused, or whose transfer failed.
//   `onComplete` sees each of them (only requests never started after `onComplete` said stop,
//   or given up at shutdown, are not reported to it).
// - Every `curl_easy_setopt` that matters is checked: a request is never sent with a URL, body or
//   TLS setting other than the one asked for.
// - Memory per transfer is bounded: at most `maximumBodyBytes` (64 KiB unless the owner asks for
//   more) of a response body are kept; the rest is read and discarded, so the connection stays
//   reusable.
// - Response headers are parsed as bytes in libcurl's header callback; an owner that reads only a
//   few of them (the worker: Retry-After, Location) names them in `keptResponseHeaders` and no
//   other header becomes a String. Header names are lower-cased, values trimmed of blanks.
// - TLS peer and host verification are always on; `HTTPTLSOptions` only says which CA to trust
//   and which client certificate to present.
// - A handle keeps what stays the same from one request to the next, and only that: the header
//   list's head (a request's `HTTPHeaderBlock` and "Expect:") while requests carry the same
//   block, its own lines replaced each time; and its URL parsed once (CURLOPT_CURLU) while
//   requests go to the same URL. Measured under callgrind in single-document mode: 5,200 and
//   10,500 instructions less per request (docs/performance.md, "Per request").
// - Bodies are copied into libcurl (COPYPOSTFIELDS): no Swift buffer is referenced after a call
//   returns. `curl_global_init` runs once, from `HTTPClient.globalInit()`, before threads start.

import CCurl
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Dispatch

public struct HTTPRequest: Sendable {
    public var url: String
    public var method: String
    /// Sent first: headers shared by many requests, turned into libcurl's list once per handle.
    public var fixedHeaders: HTTPHeaderBlock?
    /// This request's own headers, after `fixedHeaders`.
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(url: String, method: String = "POST", fixedHeaders: HTTPHeaderBlock? = nil, headers: [(String, String)] = [],
                body: [UInt8] = []) {
        self.url = url
        self.method = method
        self.fixedHeaders = fixedHeaders
        self.headers = headers
        self.body = body
    }

    /// Every header as sent: the fixed block's, then the request's own.
    public var allHeaders: [(String, String)] { (fixedHeaders?.headers ?? []) + headers }
}

/// Request headers that are the same for many requests (a worker's Content-Type, User-Agent,
/// instance, Authorization). A pooled handle keeps them as the head of its libcurl header list
/// for as long as its requests carry the same block (the same object), so they are not copied
/// into libcurl again for every request; only the request's own headers are.
public final class HTTPHeaderBlock: Sendable {
    public let headers: [(String, String)]

    public init(_ headers: [(String, String)]) { self.headers = headers }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    /// At most the client's `maximumBodyBytes` of the body.
    public var body: [UInt8]
    /// The server sent more than `body` holds; the rest was read and discarded.
    public var bodyTruncated: Bool = false
    /// Lower-cased header names.
    public var headers: [String: String]
    public var seconds: Double

    public init(status: Int, body: [UInt8], bodyTruncated: Bool = false, headers: [String: String], seconds: Double) {
        self.status = status
        self.body = body
        self.bodyTruncated = bodyTruncated
        self.headers = headers
        self.seconds = seconds
    }

    public var isSuccess: Bool { (200..<300).contains(status) }
    public var bodyText: String { String(decoding: body, as: UTF8.self) }
}

public struct HTTPTransportError: Error, CustomStringConvertible, Sendable {
    /// The CURLcode, a CURLMcode offset by `multiCodeBase`, or one of HTTPClient's own codes
    /// (`abortedCode`, `notSentCode`).
    public var code: Int
    public var message: String
    public var isTimeout: Bool

    public init(code: Int, message: String, isTimeout: Bool) {
        self.code = code
        self.message = message
        self.isTimeout = isTimeout
    }

    public var description: String { "\(message) (CURLcode \(code))" }

    /// The TLS handshake or certificate verification failed (wrong CA, wrong host name, a client
    /// certificate that is missing, unreadable or refused).
    public var isTLSFailure: Bool { HTTPClient.tlsFailureCodes.contains(code) }
}

/// Which CA the client trusts and which certificate it presents. Verification of the server's
/// certificate and host name is always on: there is deliberately no switch to turn it off.
public struct HTTPTLSOptions: Sendable, Equatable {
    /// PEM file of the CA certificate(s) to trust instead of the system's; nil: the system store.
    public var caFile: String?
    /// PEM client certificate for mutual TLS; nil: none.
    public var clientCertificate: String?
    /// PEM private key of the client certificate; nil: the key is in `clientCertificate`'s file.
    public var clientKey: String?

    public init(caFile: String? = nil, clientCertificate: String? = nil, clientKey: String? = nil) {
        self.caFile = caFile.flatMap { $0.isEmpty ? nil : $0 }
        self.clientCertificate = clientCertificate.flatMap { $0.isEmpty ? nil : $0 }
        self.clientKey = clientKey.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// `ingestor.ca_file`, `ingestor.client_cert`, `ingestor.client_key` (empty: unset).
    public init(_ ingestor: IngestorConfig) {
        self.init(caFile: ingestor.caFile, clientCertificate: ingestor.clientCert, clientKey: ingestor.clientKey)
    }
}

/// The proxy settings of the environment, read the way libcurl reads them. libcurl looks them up
/// on every transfer (five `getenv` scans of the whole environment per request, measured); a
/// daemon's environment does not change while it runs, so HTTPClient reads them once and hands
/// libcurl the result (CURLOPT_PROXY, CURLOPT_NOPROXY), which turns libcurl's lookup off.
public struct ProxySettings: Sendable, Equatable {
    /// `no_proxy`, else `NO_PROXY`; "" excludes no host.
    public var noProxy: String
    /// For http URLs: `http_proxy`, else `all_proxy`, else `ALL_PROXY`; never `HTTP_PROXY`, which
    /// libcurl ignores on purpose (a CGI program gets it from a request's `Proxy:` header). "": none.
    public var http: String
    /// For https URLs: `https_proxy`, else `HTTPS_PROXY`, else `all_proxy`, else `ALL_PROXY`. "": none.
    public var https: String

    /// An empty variable counts as set, as in libcurl: `http_proxy=` turns the proxy off and
    /// hides `all_proxy`.
    public init(environment: [String: String]) {
        let all = environment["all_proxy"] ?? environment["ALL_PROXY"]
        noProxy = environment["no_proxy"] ?? environment["NO_PROXY"] ?? ""
        http = environment["http_proxy"] ?? all ?? ""
        https = environment["https_proxy"] ?? environment["HTTPS_PROXY"] ?? all ?? ""
    }

    /// This process's environment.
    public static func fromProcessEnvironment() -> ProxySettings {
        var environment: [String: String] = [:]
        for name in ["no_proxy", "NO_PROXY", "http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        return ProxySettings(environment: environment)
    }
}

public final class HTTPClient: @unchecked Sendable {
    private final class Transfer {
        var handle: UnsafeMutableRawPointer?
        var index = 0
        var startedAt: UInt64 = 0
        var body: [UInt8] = []
        var bodyTruncated = false
        var bodyLimit = HTTPClient.defaultMaximumBodyBytes
        var headers: [String: String] = [:]
        var headerBytes = 0
        /// The handle's header list: the fixed block's lines and "Expect:", then this request's own.
        var headerList: UnsafeMutablePointer<curl_slist>?
        /// The last node of the fixed part (the request's own lines hang after it).
        var fixedLast: UnsafeMutablePointer<curl_slist>?
        /// The block the fixed part was built from (nil with a list: no block, "Expect:" alone).
        var fixedBlock: HTTPHeaderBlock?
        /// The URL parsed once (CURLOPT_CURLU) and the text it was parsed from; set on the handle
        /// again only when a request's URL differs.
        var parsedURL: OpaquePointer?
        var parsedURLText: String?
        var isTLS = false
        /// Lower-case names of the response headers to keep; nil: all.
        var keptHeaders: [[UInt8]]?
        /// The options that are the same for every request of this client are set (once per handle).
        var configured = false
        /// The proxy set on the handle is the https one (nil: none set yet).
        var proxyIsHTTPS: Bool?
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)

        init() { errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1) }

        /// One header line as libcurl hands it over (status line and final blank line included).
        func headerLine(_ line: UnsafeBufferPointer<UInt8>) {
            if HTTPClient.isStatusLine(line) {  // a new response (after 100-continue or a redirect)
                headers = [:]
                headerBytes = 0
            }
            headerBytes += line.count
            guard headerBytes <= HTTPClient.maximumHeaderBytes,
                  let (name, value) = HTTPClient.parseHeaderLine(line, keeping: keptHeaders) else { return }
            headers[name] = value
        }
        deinit {
            if let parsedURL { curl_url_cleanup(parsedURL) }
            if let headerList { curl_slist_free_all(headerList) }
            if let handle { curl_easy_cleanup(handle) }
            errorBuffer.deallocate()
        }
    }

    private let multi: UnsafeMutableRawPointer
    private var idle: [Transfer] = []
    /// Scratch space for one request header line.
    private var lineBuffer: [UInt8] = []
    public let timeoutMilliseconds: Int
    public let connectTimeoutMilliseconds: Int
    public let tls: HTTPTLSOptions
    /// Response bodies are kept up to this size; the rest is read and dropped.
    public let maximumBodyBytes: Int
    /// Lower-case names of the response headers kept in `HTTPResponse.headers`; nil: every header.
    public let keptResponseHeaders: Set<String>?
    private let keptHeaderBytes: [[UInt8]]?
    public let proxy: ProxySettings

    /// The ingestor's answers are small; a runaway one must not grow a worker's memory.
    public static let defaultMaximumBodyBytes = 64 * 1024
    /// Response headers are kept up to this total size; later ones are ignored.
    public static let maximumHeaderBytes = 64 * 1024

    /// The code of a request that was never sent because `onComplete` asked to stop launching.
    public static let notSentCode = -2
    /// The code of a request given up because `shouldAbort` returned true (message "aborted by shutdown").
    public static let abortedCode = -1
    /// A CURLMcode `m` is reported as `multiCodeBase - m` (never confused with a CURLcode).
    public static let multiCodeBase = -1000

    static let tlsFailureCodes: Set<Int> = [
        CURLE_SSL_CONNECT_ERROR, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER, CURLE_PEER_FAILED_VERIFICATION,
        CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_PINNEDPUBKEYNOTMATCH, CURLE_SSL_INVALIDCERTSTATUS,
        CURLE_SSL_CLIENTCERT, CURLE_SSL_ENGINE_NOTFOUND, CURLE_SSL_ENGINE_SETFAILED, CURLE_SSL_CRL_BADFILE,
    ].map { Int($0.rawValue) }.reduce(into: []) { $0.insert($1) }

    private static let initOnce: Void = { _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    /// Call once at start, before any thread is spawned (libcurl's requirement).
    public static func globalInit() { _ = initOnce }

    public init(timeoutMilliseconds: Int, connectTimeoutMilliseconds: Int = 10_000, maxConnections: Int = 32,
                tls: HTTPTLSOptions = HTTPTLSOptions(), maximumBodyBytes: Int = HTTPClient.defaultMaximumBodyBytes,
                keptResponseHeaders: Set<String>? = nil, proxy: ProxySettings = .fromProcessEnvironment()) {
        Self.globalInit()
        self.proxy = proxy
        multi = curl_multi_init()
        self.timeoutMilliseconds = timeoutMilliseconds
        self.connectTimeoutMilliseconds = min(connectTimeoutMilliseconds, timeoutMilliseconds)
        self.tls = tls
        self.maximumBodyBytes = max(0, maximumBodyBytes)
        let kept = keptResponseHeaders.map { Set($0.map { $0.lowercased() }) }
        self.keptResponseHeaders = kept
        keptHeaderBytes = kept.map { $0.map { Array($0.utf8) } }
        // Without MAXCONNECTS the pool drops a connection each round (measured). A failure only
        // costs connection reuse, never correctness.
        _ = curlx_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, maxConnections)
    }

    deinit {
        idle.removeAll()
        curl_multi_cleanup(multi)
    }

    /// Perform the requests with at most `maxConcurrent` in flight; results come back in request
    /// order. `onComplete` sees each result as it arrives (a request that could not even be set up
    /// included) and returns false to stop launching the rest (they come back as `notSentCode`
    /// failures, not reported to `onComplete`); `keepLaunching` returning false does the same
    /// between answers; `shouldAbort` gives up on everything (`abortedCode`).
    public func perform(_ requests: [HTTPRequest], maxConcurrent: Int, shouldAbort: () -> Bool = { false },
                        keepLaunching: () -> Bool = { true }, mayLaunch: () -> Bool = { true },
                        onComplete: (Int, Result<HTTPResponse, HTTPTransportError>) -> Bool = { _, _ in true }) -> [Result<HTTPResponse, HTTPTransportError>] {
        perform(count: requests.count, request: { requests[$0] }, maxConcurrent: maxConcurrent, shouldAbort: shouldAbort,
                keepLaunching: keepLaunching, mayLaunch: mayLaunch, onComplete: onComplete)
    }

    /// The same, with request `i` made by `request(i)` just before it is sent (each at most once):
    /// only the requests in flight exist at any time, however many are performed (a
    /// worker at batch 5000 once held 5,000 bodies and header lists for the whole batch).
    ///
    /// `mayLaunch` is asked right before each request starts, every one of them: false ends the
    /// launching (the rest are not sent; what is in flight goes on). The worker's lease gate.
    public func perform(count: Int, request: (Int) -> HTTPRequest, maxConcurrent: Int, shouldAbort: () -> Bool = { false },
                        keepLaunching: () -> Bool = { true }, mayLaunch: () -> Bool = { true },
                        onComplete: (Int, Result<HTTPResponse, HTTPTransportError>) -> Bool = { _, _ in true }) -> [Result<HTTPResponse, HTTPTransportError>] {
        let requestCount = max(0, count)
        var results: [Result<HTTPResponse, HTTPTransportError>?] = Array(repeating: nil, count: requestCount)
        var next = 0
        var active: [UnsafeMutableRawPointer: Transfer] = [:]
        let limit = max(1, maxConcurrent)

        func stopLaunching() {
            for index in next..<requestCount {
                results[index] = .failure(HTTPTransportError(code: Self.notSentCode, message: "not sent", isTimeout: false))
            }
            next = requestCount
        }

        // The one place a request ends.
        func finish(_ index: Int, _ result: Result<HTTPResponse, HTTPTransportError>) {
            results[index] = result
            if !onComplete(index, result) { stopLaunching() }
        }

        func finishActive(_ easy: UnsafeMutableRawPointer, _ transfer: Transfer, _ result: Result<HTTPResponse, HTTPTransportError>) {
            active.removeValue(forKey: easy)
            _ = curl_multi_remove_handle(multi, easy)
            checkin(transfer)
            finish(transfer.index, result)
        }

        func launch() {
            // Stopping gracefully: what is in flight finishes, nothing new starts.
            if next < requestCount && !keepLaunching() { stopLaunching() }
            while active.count < limit && next < requestCount {
                guard mayLaunch() else {
                    stopLaunching()
                    break
                }
                let index = next
                next += 1
                let transfer = checkout()
                transfer.index = index
                do {
                    try configure(transfer, request(index))
                } catch {
                    checkin(transfer)
                    finish(index, .failure(error))
                    continue
                }
                transfer.startedAt = DispatchTime.now().uptimeNanoseconds
                let added = curl_multi_add_handle(multi, transfer.handle)
                guard added == CURLM_OK else {
                    checkin(transfer)
                    finish(index, .failure(Self.multiError(added, "curl_multi_add_handle")))
                    continue
                }
                active[transfer.handle!] = transfer
            }
        }

        // A failure of the multi handle itself ends every transfer in flight with that error, so
        // the loop never spins on transfers that cannot progress.
        func failActive(_ error: HTTPTransportError) {
            for (easy, transfer) in active { finishActive(easy, transfer, .failure(error)) }
        }

        launch()
        while !active.isEmpty {
            var running: Int32 = 0
            let performed = curl_multi_perform(multi, &running)
            if performed != CURLM_OK {
                failActive(Self.multiError(performed, "curl_multi_perform"))
            }
            var queued: Int32 = 0
            while let msg = curl_multi_info_read(multi, &queued) {
                guard msg.pointee.msg == CURLMSG_DONE, let easy = msg.pointee.easy_handle,
                      let transfer = active[easy] else { continue }
                finishActive(easy, transfer, outcome(of: transfer, code: msg.pointee.data.result))
            }
            if shouldAbort() {
                // Shutting down: give up on what is in flight. Nothing was acknowledged, so the
                // tracking rows stay and are published after the restart.
                for (easy, transfer) in active {
                    _ = curl_multi_remove_handle(multi, easy)
                    results[transfer.index] = .failure(HTTPTransportError(code: Self.abortedCode, message: "aborted by shutdown", isTimeout: false))
                    checkin(transfer)
                }
                active.removeAll()
                next = requestCount
                break
            }
            launch()
            if active.isEmpty { break }
            var fds: Int32 = 0
            let polled = curl_multi_poll(multi, nil, 0, 100, &fds)
            if polled != CURLM_OK {
                failActive(Self.multiError(polled, "curl_multi_poll"))
                launch()
            }
        }
        return results.map { $0 ?? .failure(HTTPTransportError(code: Self.abortedCode, message: "request not performed", isTimeout: false)) }
    }

    /// One request, for commands and tests.
    public func perform(_ request: HTTPRequest) -> Result<HTTPResponse, HTTPTransportError> {
        perform([request], maxConcurrent: 1)[0]
    }

    // MARK: - transfers

    private func outcome(of transfer: Transfer, code: CURLcode) -> Result<HTTPResponse, HTTPTransportError> {
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - transfer.startedAt) / 1e9
        guard code == CURLE_OK else {
            let detail = String(cString: transfer.errorBuffer)
            var text = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            if transfer.isTLS, let hint = clientCertificateHint(code) { text += hint }
            return .failure(HTTPTransportError(code: Int(code.rawValue), message: text, isTimeout: code == CURLE_OPERATION_TIMEDOUT))
        }
        var status = 0
        let info = curlx_getinfo_long(transfer.handle, CURLINFO_RESPONSE_CODE, &status)
        guard info == CURLE_OK, status > 0 else {
            return .failure(HTTPTransportError(code: Int(info.rawValue), message: "no HTTP status in the response", isTimeout: false))
        }
        return .success(HTTPResponse(status: status, body: transfer.body, bodyTruncated: transfer.bodyTruncated,
                                     headers: transfer.headers, seconds: seconds))
    }

    /// With TLS 1.3 a server checks the client's certificate after the client considers the
    /// handshake done, so a missing or refused certificate shows up as the connection dropping
    /// ("getpeername() failed", "Send failure", "SSL_read: ... alert certificate required"):
    /// name the likely cause, which libcurl cannot know.
    private func clientCertificateHint(_ code: CURLcode) -> String? {
        guard [CURLE_SSL_CONNECT_ERROR, CURLE_GOT_NOTHING, CURLE_SEND_ERROR, CURLE_RECV_ERROR].contains(code) else { return nil }
        return tls.clientCertificate == nil
            ? " (over TLS: if the server requires a client certificate, set ingestor.client_cert and ingestor.client_key)"
            : " (over TLS: the server may have refused the client certificate of ingestor.client_cert)"
    }

    private func checkout() -> Transfer {
        if let transfer = idle.popLast() { return transfer }
        let transfer = Transfer()
        transfer.handle = curl_easy_init()
        return transfer
    }

    private func checkin(_ transfer: Transfer) {
        // The header list stays with the handle: its fixed part serves the next request.
        transfer.body = []
        transfer.bodyTruncated = false
        transfer.headers = [:]
        transfer.headerBytes = 0
        // A handle that never got one stays out of the pool: the next checkout makes a new one.
        if transfer.handle != nil { idle.append(transfer) }
    }

    /// The URL's scheme is https (any case), without building a lower-cased copy per request.
    static func isHTTPS(_ url: String) -> Bool {
        var it = url.utf8.makeIterator()
        for expected in "https:".utf8 {
            guard let byte = it.next(), asciiLower(byte) == expected else { return false }
        }
        return true
    }

    @inline(__always)
    static func asciiLower(_ byte: UInt8) -> UInt8 { byte &- 0x41 < 26 ? byte | 0x20 : byte }

    /// `HTTP/...`: the status line that starts a response.
    static func isStatusLine(_ line: UnsafeBufferPointer<UInt8>) -> Bool {
        line.count >= 5 && line[0] == 0x48 && line[1] == 0x54 && line[2] == 0x54 && line[3] == 0x50 && line[4] == 0x2F
    }

    /// `Name: value` as (lower-cased name, value without surrounding blanks and CR LF), parsed as
    /// bytes; nil for a line without a colon or, when `keeping` is given, a name not in it.
    static func parseHeaderLine(_ line: UnsafeBufferPointer<UInt8>, keeping: [[UInt8]]? = nil) -> (String, String)? {
        guard let colon = line.firstIndex(of: 0x3A) else { return nil }
        if let keeping {
            let wanted = keeping.contains { name in
                name.count == colon && name.withUnsafeBufferPointer { n in
                    var i = 0
                    while i < colon, n[i] == asciiLower(line[i]) { i += 1 }
                    return i == colon
                }
            }
            if !wanted { return nil }
        }
        // Space, and tab to carriage return (HT, LF, VT, FF, CR).
        @inline(__always) func isBlank(_ byte: UInt8) -> Bool { byte == 0x20 || (byte >= 0x09 && byte <= 0x0D) }
        var start = colon + 1
        var end = line.count
        while start < end, isBlank(line[start]) { start += 1 }
        while end > start, isBlank(line[end - 1]) { end -= 1 }
        var nameBytes = Array(UnsafeBufferPointer(rebasing: line[..<colon]))
        for i in nameBytes.indices { nameBytes[i] = asciiLower(nameBytes[i]) }
        return (String(decoding: nameBytes, as: UTF8.self), String(decoding: UnsafeBufferPointer(rebasing: line[start..<end]), as: UTF8.self))
    }

    private static func multiError(_ code: CURLMcode, _ call: String) -> HTTPTransportError {
        HTTPTransportError(code: multiCodeBase - Int(code.rawValue),
                           message: "\(call) failed: \(String(cString: curl_multi_strerror(code)))", isTimeout: false)
    }

    private func configure(_ transfer: Transfer, _ request: HTTPRequest) throws(HTTPTransportError) {
        guard let h = transfer.handle else {
            throw HTTPTransportError(code: Self.abortedCode, message: "curl_easy_init failed", isTimeout: false)
        }
        transfer.errorBuffer[0] = 0
        transfer.isTLS = Self.isHTTPS(request.url)
        transfer.bodyLimit = maximumBodyBytes
        transfer.keptHeaders = keptHeaderBytes

        func check(_ rc: CURLcode, _ option: String) throws(HTTPTransportError) {
            guard rc == CURLE_OK else {
                throw HTTPTransportError(code: Int(rc.rawValue),
                                         message: "cannot set \(option) for the request: \(String(cString: curl_easy_strerror(rc)))",
                                         isTimeout: false)
            }
        }

        // The client's options are set once per handle; every option a request sets is set (or
        // cleared) for every request, so nothing of a handle's previous request survives.
        // (`curl_easy_reset` and setting all of them again cost 11k instructions per request.)
        if !transfer.configured {
            try configureOnce(h, transfer, check)
            transfer.configured = true
        }
        if transfer.parsedURLText != request.url {
            transfer.parsedURLText = nil
            if transfer.parsedURL == nil { transfer.parsedURL = curl_url() }
            guard let parsed = transfer.parsedURL else {
                throw HTTPTransportError(code: Int(CURLE_OUT_OF_MEMORY.rawValue), message: "curl_url failed", isTimeout: false)
            }
            if curl_url_set(parsed, CURLUPART_URL, request.url, 0) == CURLUE_OK {
                try check(curlx_setopt_ptr(h, CURLOPT_CURLU, UnsafeRawPointer(parsed)), "CURLOPT_CURLU")
                transfer.parsedURLText = request.url
            } else {
                // A URL the parser refuses is left to libcurl's own checks, so it fails as it
                // would without the parsed handle: CURLOPT_URL refuses it, or the transfer does.
                try check(curlx_setopt_ptr(h, CURLOPT_CURLU, nil), "CURLOPT_CURLU")
                try check(curlx_setopt_ptr(h, CURLOPT_URL, request.url), "CURLOPT_URL")
            }
        }
        if transfer.proxyIsHTTPS != transfer.isTLS {
            transfer.proxyIsHTTPS = nil
            try check(curlx_setopt_ptr(h, CURLOPT_PROXY, transfer.isTLS ? proxy.https : proxy.http), "CURLOPT_PROXY")
            transfer.proxyIsHTTPS = transfer.isTLS
        }
        try setRequestOptions(h, transfer, request, check)
    }

    /// The options every request of this client shares (protocols, timeouts, TLS, callbacks).
    private func configureOnce(_ h: UnsafeMutableRawPointer, _ transfer: Transfer,
                               _ check: (CURLcode, String) throws(HTTPTransportError) -> Void) throws(HTTPTransportError) {
        let context = Unmanaged.passUnretained(transfer).toOpaque()
        try check(curlx_setopt_ptr(h, CURLOPT_ERRORBUFFER, transfer.errorBuffer), "CURLOPT_ERRORBUFFER")
        try check(curlx_setopt_ptr(h, CURLOPT_PROTOCOLS_STR, "http,https"), "CURLOPT_PROTOCOLS_STR")
        try check(curlx_setopt_long(h, CURLOPT_NOSIGNAL, 1), "CURLOPT_NOSIGNAL")
        try check(curlx_setopt_long(h, CURLOPT_TIMEOUT_MS, timeoutMilliseconds), "CURLOPT_TIMEOUT_MS")
        try check(curlx_setopt_long(h, CURLOPT_CONNECTTIMEOUT_MS, connectTimeoutMilliseconds), "CURLOPT_CONNECTTIMEOUT_MS")
        try check(curlx_setopt_ptr(h, CURLOPT_NOPROXY, proxy.noProxy), "CURLOPT_NOPROXY")
        // Performance only: a failure here changes no request.
        _ = curlx_setopt_long(h, CURLOPT_TCP_KEEPALIVE, 1)
        _ = curlx_setopt_long(h, CURLOPT_TCP_NODELAY, 1)

        // TLS: verification on, always (libcurl's default, set anyway so it is never left to chance).
        try check(curlx_setopt_long(h, CURLOPT_SSL_VERIFYPEER, 1), "CURLOPT_SSL_VERIFYPEER")
        try check(curlx_setopt_long(h, CURLOPT_SSL_VERIFYHOST, 2), "CURLOPT_SSL_VERIFYHOST")
        if let caFile = tls.caFile { try check(curlx_setopt_ptr(h, CURLOPT_CAINFO, caFile), "CURLOPT_CAINFO") }
        if let certificate = tls.clientCertificate {
            try check(curlx_setopt_ptr(h, CURLOPT_SSLCERT, certificate), "CURLOPT_SSLCERT")
            try check(curlx_setopt_ptr(h, CURLOPT_SSLCERTTYPE, "PEM"), "CURLOPT_SSLCERTTYPE")
        }
        if let key = tls.clientKey { try check(curlx_setopt_ptr(h, CURLOPT_SSLKEY, key), "CURLOPT_SSLKEY") }

        try check(curlx_setopt_write(h, CURLOPT_WRITEFUNCTION) { data, size, count, user in
            guard let data, let user else { return 0 }
            let t = Unmanaged<Transfer>.fromOpaque(user).takeUnretainedValue()
            let n = size * count
            let room = t.bodyLimit - t.body.count
            let kept = min(n, max(0, room))
            if kept > 0 {
                data.withMemoryRebound(to: UInt8.self, capacity: kept) { t.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: kept)) }
            }
            if kept < n { t.bodyTruncated = true }
            // Report everything as consumed: the rest is drained, not refused, so the response
            // completes and its connection can be reused.
            return n
        }, "CURLOPT_WRITEFUNCTION")
        try check(curlx_setopt_ptr(h, CURLOPT_WRITEDATA, context), "CURLOPT_WRITEDATA")
        try check(curlx_setopt_write(h, CURLOPT_HEADERFUNCTION) { data, size, count, user in
            guard let data, let user else { return 0 }
            let t = Unmanaged<Transfer>.fromOpaque(user).takeUnretainedValue()
            let n = size * count
            data.withMemoryRebound(to: UInt8.self, capacity: n) { t.headerLine(UnsafeBufferPointer(start: $0, count: n)) }
            return n
        }, "CURLOPT_HEADERFUNCTION")
        try check(curlx_setopt_ptr(h, CURLOPT_HEADERDATA, context), "CURLOPT_HEADERDATA")
    }

    private static let headerListFailed = HTTPTransportError(code: Int(CURLE_OUT_OF_MEMORY.rawValue), message: "curl_slist_append failed", isTimeout: false)

    /// "Name: value" appended to `list` (libcurl copies it), assembled in one reused buffer.
    private func append(_ name: String, _ value: String, to list: UnsafeMutablePointer<curl_slist>?) -> UnsafeMutablePointer<curl_slist>? {
        lineBuffer.removeAll(keepingCapacity: true)
        lineBuffer.append(contentsOf: name.utf8)
        lineBuffer.append(0x3A)
        lineBuffer.append(0x20)
        lineBuffer.append(contentsOf: value.utf8)
        lineBuffer.append(0)
        return lineBuffer.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { curl_slist_append(list, $0.baseAddress) }
        }
    }

    /// The handle's header list for `request`: the fixed part is rebuilt only when the request's
    /// block is another one; the previous request's own lines are dropped and this one's appended.
    private func setHeaders(_ transfer: Transfer, _ request: HTTPRequest) throws(HTTPTransportError) {
        let outOfMemory = Self.headerListFailed
        if transfer.headerList == nil || transfer.fixedBlock !== request.fixedHeaders {
            if let list = transfer.headerList { curl_slist_free_all(list) }
            transfer.headerList = nil
            transfer.fixedLast = nil
            transfer.fixedBlock = nil
            // libcurl adds "Expect: 100-continue" to large POSTs, which costs a round trip.
            guard var list = curl_slist_append(nil, "Expect:") else { throw outOfMemory }
            for (name, value) in request.fixedHeaders?.headers ?? [] {
                guard let appended = append(name, value, to: list) else {
                    curl_slist_free_all(list)
                    throw outOfMemory
                }
                list = appended
            }
            var last = list
            while let next = last.pointee.next { last = next }
            transfer.headerList = list
            transfer.fixedLast = last
            transfer.fixedBlock = request.fixedHeaders
        } else if let last = transfer.fixedLast, let own = last.pointee.next {
            last.pointee.next = nil
            curl_slist_free_all(own)
        }
        guard let last = transfer.fixedLast else { throw outOfMemory }
        var tail = last
        for (name, value) in request.headers {
            guard let appended = append(name, value, to: tail) else {
                if let own = last.pointee.next { curl_slist_free_all(own) }
                last.pointee.next = nil
                throw outOfMemory
            }
            // curl_slist_append returns the list it was given; the new node is its last.
            tail = appended
            while let next = tail.pointee.next { tail = next }
        }
    }

    /// The options of one request: its headers and its method and body (the URL is set by the caller).
    private func setRequestOptions(_ h: UnsafeMutableRawPointer, _ transfer: Transfer, _ request: HTTPRequest,
                                   _ check: (CURLcode, String) throws(HTTPTransportError) -> Void) throws(HTTPTransportError) {
        try setHeaders(transfer, request)
        let list = transfer.headerList
        try check(curlx_setopt_ptr(h, CURLOPT_HTTPHEADER, list), "CURLOPT_HTTPHEADER")

        if request.method == "GET" {
            try check(curlx_setopt_long(h, CURLOPT_HTTPGET, 1), "CURLOPT_HTTPGET")
        } else {
            try check(curlx_setopt_long(h, CURLOPT_POST, 1), "CURLOPT_POST")
            try check(curlx_setopt_off(h, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count)), "CURLOPT_POSTFIELDSIZE_LARGE")
            try check(request.body.withUnsafeBufferPointer { curlx_setopt_ptr(h, CURLOPT_COPYPOSTFIELDS, $0.baseAddress ?? UnsafePointer(bitPattern: 1)) },
                      "CURLOPT_COPYPOSTFIELDS")
        }
        // Set or cleared every time: a PUT's method must not stay on the handle for the next POST.
        try check(curlx_setopt_ptr(h, CURLOPT_CUSTOMREQUEST, request.method == "POST" || request.method == "GET" ? nil : request.method),
                  "CURLOPT_CUSTOMREQUEST")
    }
}
