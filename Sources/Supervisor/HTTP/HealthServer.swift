// GET /health, /livez, /readyz, /metrics and /metrics/prometheus on
// health_check_address:health_check_port, served by SwiftNIO on its own event loop thread. The
// supervisor loop publishes a snapshot; the HTTP thread only reads it, so a slow scrape never
// delays supervision. The store also remembers when the snapshot was published: /livez is the
// age of that moment (the loop publishes every iteration).

import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

final class SnapshotStore: Sendable {
    private struct Published {
        var snapshot: ServiceSnapshot
        var at: ContinuousClock.Instant
    }

    private let value: Mutex<Published>

    init(_ snapshot: ServiceSnapshot) {
        value = Mutex(Published(snapshot: snapshot, at: .now))
    }

    func publish(_ snapshot: ServiceSnapshot) {
        let now = ContinuousClock.now
        value.withLock { $0 = Published(snapshot: snapshot, at: now) }
    }

    func read() -> ServiceSnapshot {
        value.withLock { $0.snapshot }
    }

    /// Seconds since the supervisor loop last published a snapshot (monotonic clock).
    func secondsSincePublished() -> Double {
        let at = value.withLock { $0.at }
        let d = at.duration(to: .now).components
        return Double(d.seconds) + Double(d.attoseconds) / 1e18
    }
}

final class HealthServer {
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private var channel: Channel?

    /// Bind and start serving; returns the bound port (useful when `port` is 0).
    func start(host: String, port: Int, store: SnapshotStore) throws -> Int {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(HealthHandler(store: store))
                }
            }
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
        let channel = try bootstrap.bind(host: host, port: port).wait()
        self.channel = channel
        return channel.localAddress?.port ?? port
    }

    /// Why `start` failed, in words (a system call's errno as text, not NIO's error dump).
    static func reason(_ error: any Error) -> String {
        (error as? IOError).map { String(cString: strerror($0.errnoCode)).lowercased() } ?? "\(error)"
    }

    func stop() {
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
    }
}

private final class HealthHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let store: SnapshotStore
    private var head: HTTPRequestHead?

    init(store: SnapshotStore) {
        self.store = store
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(context: context, head: head)
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        let contentType: String
        let body: String
        if head.method != .GET && head.method != .HEAD {
            (status, contentType, body) = (.methodNotAllowed, "application/json", "{\"error\":\"method not allowed\"}")
        } else {
            let snapshot = store.read()
            switch path {
            case "/health", "/healthz":
                status = snapshot.health == .unhealthy ? .serviceUnavailable : .ok
                (contentType, body) = ("application/json", snapshot.healthJSON)
            case "/livez":
                let live = Liveness.decide(snapshotAgeSeconds: store.secondsSincePublished())
                status = live.ok ? .ok : .serviceUnavailable
                (contentType, body) = ("application/json", probeJSON(live, okStatus: "alive", failStatus: "stalled"))
            case "/readyz":
                let ready = snapshot.readiness
                status = ready.ok ? .ok : .serviceUnavailable
                (contentType, body) = ("application/json", probeJSON(ready, okStatus: "ready", failStatus: "not_ready"))
            case "/metrics":
                (status, contentType, body) = (.ok, "application/json", snapshot.metricsJSON)
            case "/metrics/prometheus":
                (status, contentType, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", snapshot.prometheusText)
            default:
                (status, contentType, body) = (.notFound, "application/json", "{\"error\":\"not found\",\"paths\":[\"/health\",\"/livez\",\"/readyz\",\"/metrics\",\"/metrics/prometheus\"]}")
            }
        }
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count + 1)
        buffer.writeString(body)
        buffer.writeString("\n")
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(buffer.readableBytes))
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            done.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }
}
