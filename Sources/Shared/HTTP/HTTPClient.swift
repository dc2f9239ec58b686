// The one file that imports libcurl. Everything else sees `HTTPClient`, `HTTPRequest`,
// `HTTPResponse` and `HTTPTransportError`.
//
// Invariants: one HTTPClient per owner (a worker's loop); its multi handle and a pool of easy
// handles are reused across batches, so keep-alive connections survive from one batch to the next.
// Bodies are copied into libcurl (COPYPOSTFIELDS): no Swift buffer is referenced after a call
// returns. `curl_global_init` runs once, from `HTTPClient.globalInit()`, before threads start.

import CCurl
import Foundation

public struct HTTPRequest: Sendable {
    public var url: String
    public var method: String
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(url: String, method: String = "POST", headers: [(String, String)] = [], body: [UInt8] = []) {
        self.url = url
        self.method = method
        self.headers = headers
        self.body = body
    }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    public var body: [UInt8]
    /// Lower-cased header names.
    public var headers: [String: String]
    public var seconds: Double

    public init(status: Int, body: [UInt8], headers: [String: String], seconds: Double) {
        self.status = status
        self.body = body
        self.headers = headers
        self.seconds = seconds
    }

    public var isSuccess: Bool { (200..<300).contains(status) }
    public var bodyText: String { String(decoding: body, as: UTF8.self) }
}

public struct HTTPTransportError: Error, CustomStringConvertible, Sendable {
    public var code: Int
    public var message: String
    public var isTimeout: Bool

    public init(code: Int, message: String, isTimeout: Bool) {
        self.code = code
        self.message = message
        self.isTimeout = isTimeout
    }

    public var description: String { "\(message) (CURLcode \(code))" }
}

public final class HTTPClient: @unchecked Sendable {
    private final class Transfer {
        var handle: UnsafeMutableRawPointer?
        var index = 0
        var body: [UInt8] = []
        var headers: [String: String] = [:]
        var headerList: UnsafeMutablePointer<curl_slist>?
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)

        init() { errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1) }
        deinit {
            if let headerList { curl_slist_free_all(headerList) }
            if let handle { curl_easy_cleanup(handle) }
            errorBuffer.deallocate()
        }
    }

    private let multi: UnsafeMutableRawPointer
    private var idle: [Transfer] = []
    public let timeoutMilliseconds: Int
    public let connectTimeoutMilliseconds: Int

    private static let initOnce: Void = { _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    /// Call once at start, before any thread is spawned (libcurl's requirement).
    public static func globalInit() { _ = initOnce }

    public init(timeoutMilliseconds: Int, connectTimeoutMilliseconds: Int = 10_000, maxConnections: Int = 32) {
        Self.globalInit()
        multi = curl_multi_init()
        self.timeoutMilliseconds = timeoutMilliseconds
        self.connectTimeoutMilliseconds = min(connectTimeoutMilliseconds, timeoutMilliseconds)
        // Without MAXCONNECTS the pool drops a connection each round (measured).
        _ = curlx_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, maxConnections)
    }

    deinit {
        idle.removeAll()
        curl_multi_cleanup(multi)
    }

    /// The code of a request that was never sent because `onComplete` asked to stop launching.
    public static let notSentCode = -2

    /// Perform the requests with at most `maxConcurrent` in flight; results come back in request
    /// order. `onComplete` sees each result as it arrives and returns false to stop launching the
    /// rest (they come back as `notSentCode` failures); `shouldAbort` gives up on everything.
    public func perform(_ requests: [HTTPRequest], maxConcurrent: Int, shouldAbort: () -> Bool = { false },
                        onComplete: (Int, Result<HTTPResponse, HTTPTransportError>) -> Bool = { _, _ in true }) -> [Result<HTTPResponse, HTTPTransportError>] {
        var results: [Result<HTTPResponse, HTTPTransportError>?] = Array(repeating: nil, count: requests.count)
        var next = 0
        var active: [UnsafeMutableRawPointer: Transfer] = [:]
        let limit = max(1, maxConcurrent)
        let started = DispatchTime.now().uptimeNanoseconds
        var startedAt: [Int: UInt64] = [:]

        func launch() {
            while active.count < limit && next < requests.count {
                let index = next
                next += 1
                let transfer = checkout()
                do {
                    try configure(transfer, requests[index])
                } catch {
                    results[index] = .failure(error)
                    checkin(transfer)
                    continue
                }
                transfer.index = index
                startedAt[index] = DispatchTime.now().uptimeNanoseconds
                curl_multi_add_handle(multi, transfer.handle)
                active[transfer.handle!] = transfer
            }
        }

        launch()
        while !active.isEmpty {
            var running: Int32 = 0
            _ = curl_multi_perform(multi, &running)
            var queued: Int32 = 0
            while let msg = curl_multi_info_read(multi, &queued) {
                guard msg.pointee.msg == CURLMSG_DONE, let easy = msg.pointee.easy_handle,
                      let transfer = active.removeValue(forKey: easy) else { continue }
                let code = msg.pointee.data.result
                curl_multi_remove_handle(multi, easy)
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - (startedAt[transfer.index] ?? started)) / 1e9
                if code == CURLE_OK {
                    var status = 0
                    _ = curlx_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
                    results[transfer.index] = .success(HTTPResponse(status: status, body: transfer.body, headers: transfer.headers, seconds: seconds))
                } else {
                    let detail = String(cString: transfer.errorBuffer)
                    let text = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
                    results[transfer.index] = .failure(HTTPTransportError(
                        code: Int(code.rawValue), message: text, isTimeout: code == CURLE_OPERATION_TIMEDOUT))
                }
                checkin(transfer)
                if let result = results[transfer.index], !onComplete(transfer.index, result) {
                    for index in next..<requests.count {
                        results[index] = .failure(HTTPTransportError(code: Self.notSentCode, message: "not sent", isTimeout: false))
                    }
                    next = requests.count
                }
            }
            if shouldAbort() {
                // Shutting down: give up on what is in flight. Nothing was acknowledged, so the
                // tracking rows stay and are published after the restart.
                for (easy, transfer) in active {
                    curl_multi_remove_handle(multi, easy)
                    results[transfer.index] = .failure(HTTPTransportError(code: -1, message: "aborted by shutdown", isTimeout: false))
                    checkin(transfer)
                }
                active.removeAll()
                next = requests.count
                break
            }
            launch()
            if active.isEmpty { break }
            var fds: Int32 = 0
            _ = curl_multi_poll(multi, nil, 0, 100, &fds)
        }
        return results.map { $0 ?? .failure(HTTPTransportError(code: -1, message: "request not performed", isTimeout: false)) }
    }

    /// One request, for commands and tests.
    public func perform(_ request: HTTPRequest) -> Result<HTTPResponse, HTTPTransportError> {
        perform([request], maxConcurrent: 1)[0]
    }

    private func checkout() -> Transfer {
        if let transfer = idle.popLast() { return transfer }
        let transfer = Transfer()
        transfer.handle = curl_easy_init()
        return transfer
    }

    private func checkin(_ transfer: Transfer) {
        if let list = transfer.headerList { curl_slist_free_all(list) }
        transfer.headerList = nil
        transfer.body = []
        transfer.headers = [:]
        idle.append(transfer)
    }

    private func configure(_ transfer: Transfer, _ request: HTTPRequest) throws(HTTPTransportError) {
        guard let h = transfer.handle else {
            throw HTTPTransportError(code: -1, message: "curl_easy_init failed", isTimeout: false)
        }
        transfer.errorBuffer[0] = 0
        let context = Unmanaged.passUnretained(transfer).toOpaque()
        var rc = curlx_setopt_ptr(h, CURLOPT_URL, request.url)
        _ = curlx_setopt_long(h, CURLOPT_NOSIGNAL, 1)
        _ = curlx_setopt_long(h, CURLOPT_TIMEOUT_MS, timeoutMilliseconds)
        _ = curlx_setopt_long(h, CURLOPT_CONNECTTIMEOUT_MS, connectTimeoutMilliseconds)
        _ = curlx_setopt_ptr(h, CURLOPT_ERRORBUFFER, transfer.errorBuffer)
        _ = curlx_setopt_long(h, CURLOPT_TCP_KEEPALIVE, 1)
        _ = curlx_setopt_long(h, CURLOPT_TCP_NODELAY, 1)
        _ = curlx_setopt_write(h, CURLOPT_WRITEFUNCTION) { data, size, count, user in
            guard let data, let user else { return 0 }
            let t = Unmanaged<Transfer>.fromOpaque(user).takeUnretainedValue()
            let n = size * count
            data.withMemoryRebound(to: UInt8.self, capacity: n) { t.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: n)) }
            return n
        }
        _ = curlx_setopt_ptr(h, CURLOPT_WRITEDATA, context)
        _ = curlx_setopt_write(h, CURLOPT_HEADERFUNCTION) { data, size, count, user in
            guard let data, let user else { return 0 }
            let t = Unmanaged<Transfer>.fromOpaque(user).takeUnretainedValue()
            let n = size * count
            let line = data.withMemoryRebound(to: UInt8.self, capacity: n) { String(decoding: UnsafeBufferPointer(start: $0, count: n), as: UTF8.self) }
            if line.hasPrefix("HTTP/") { t.headers = [:] }  // a new response (after 100-continue or a redirect)
            if let colon = line.firstIndex(of: ":") {
                let name = line[..<colon].lowercased()
                let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
                t.headers[name] = value
            }
            return n
        }
        _ = curlx_setopt_ptr(h, CURLOPT_HEADERDATA, context)
        var list: UnsafeMutablePointer<curl_slist>? = nil
        for (name, value) in request.headers {
            list = curl_slist_append(list, "\(name): \(value)")
        }
        // libcurl adds "Expect: 100-continue" to large POSTs, which costs a round trip.
        list = curl_slist_append(list, "Expect:")
        transfer.headerList = list
        _ = curlx_setopt_ptr(h, CURLOPT_HTTPHEADER, list)
        if request.method == "GET" {
            // Pooled handles remember their last method: clear any custom one.
            _ = curlx_setopt_ptr(h, CURLOPT_CUSTOMREQUEST, nil)
            _ = curlx_setopt_long(h, CURLOPT_HTTPGET, 1)
        } else {
            _ = curlx_setopt_long(h, CURLOPT_POST, 1)
            _ = curlx_setopt_off(h, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count))
            rc = request.body.withUnsafeBufferPointer { curlx_setopt_ptr(h, CURLOPT_COPYPOSTFIELDS, $0.baseAddress ?? UnsafePointer(bitPattern: 1)) }
            if request.method != "POST" {
                _ = curlx_setopt_ptr(h, CURLOPT_CUSTOMREQUEST, request.method)
            } else {
                _ = curlx_setopt_ptr(h, CURLOPT_CUSTOMREQUEST, nil)
            }
        }
        if rc != CURLE_OK {
            throw HTTPTransportError(code: Int(rc.rawValue), message: String(cString: curl_easy_strerror(rc)), isTimeout: false)
        }
    }
}
