import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Shared

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask the running service's /health and print one line per table.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        let host = ["0.0.0.0", "::", ""].contains(config.service.healthCheckAddress) ? "127.0.0.1" : config.service.healthCheckAddress
        let url = "http://\(host.contains(":") ? "[\(host)]" : host):\(config.service.healthCheckPort)/health"
        let client = HTTPClient(timeoutMilliseconds: 5000, maximumBodyBytes: 1 << 24)  // /health lists every table
        let response: HTTPResponse
        switch client.perform(HTTPRequest(url: url, method: "GET")) {
        case .success(let r): response = r
        case .failure(let e): CommandSupport.fail("the service does not answer at \(url): \(e.message); is it running?", status: 3)
        }
        guard let object = JSONValue.parse(response.body)?.object,
              let tables = object["components"]?["tables"]?.object, tables.values.allSatisfy({ $0.object != nil }) else {
            CommandSupport.fail("unexpected answer from \(url) (HTTP \(response.status))", status: 3)
        }
        func text(_ value: JSONValue?, _ missing: String) -> String { value?.description ?? missing }
        CommandSupport.say("service: \(text(object["status"], "?")) (instance \(text(object["instance"], "?")), version \(text(object["version"], "?")), up \(text(object["uptime_seconds"], "0")) s)")
        for name in tables.keys.sorted() {
            let t = tables[name]!
            let pid = t["pid"]?.int.map(String.init) ?? "-"
            CommandSupport.say("\(name): \(text(t["state"], "?")) pid \(pid), restarts \(text(t["restarts"], "0")), backlog \(text(t["backlog"], "0")), lease \(text(t["lease"], "?"))\(t["leader"]?.string.map { " (leader \($0))" } ?? ""), database \(text(t["database"], "?")), breaker \(text(t["circuit_breaker"], "?")), last publish \(t["last_publish"]?.string ?? "never")")
        }
        if response.status != 200 { throw ExitCode(1) }
    }
}
