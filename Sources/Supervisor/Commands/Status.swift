import ArgumentParser
import Foundation
import Shared

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask the running service's /health and print one line per table.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        let host = ["0.0.0.0", "::", ""].contains(config.service.healthCheckAddress) ? "127.0.0.1" : config.service.healthCheckAddress
        let url = "http://\(host.contains(":") ? "[\(host)]" : host):\(config.service.healthCheckPort)/health"
        let client = HTTPClient(timeoutMilliseconds: 5000)
        let response: HTTPResponse
        switch client.perform(HTTPRequest(url: url, method: "GET")) {
        case .success(let r): response = r
        case .failure(let e): CommandSupport.fail("the service does not answer at \(url): \(e.message); is it running?", status: 3)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
              let components = object["components"] as? [String: Any], let tables = components["tables"] as? [String: [String: Any]] else {
            CommandSupport.fail("unexpected answer from \(url) (HTTP \(response.status))", status: 3)
        }
        CommandSupport.say("service: \(object["status"] ?? "?") (version \(object["version"] ?? "?"), up \(object["uptime_seconds"] ?? 0) s)")
        for name in tables.keys.sorted() {
            let t = tables[name]!
            let pid = (t["pid"] as? Int).map(String.init) ?? "-"
            CommandSupport.say("\(name): \(t["state"] ?? "?") pid \(pid), restarts \(t["restarts"] ?? 0), backlog \(t["backlog"] ?? 0), database \(t["database"] ?? "?"), breaker \(t["circuit_breaker"] ?? "?"), last publish \((t["last_publish"] as? String) ?? "never")")
        }
        if response.status != 200 { throw ExitCode(1) }
    }
}
