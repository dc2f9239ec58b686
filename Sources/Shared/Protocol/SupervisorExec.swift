// `atomic-data-publisher run` checks the configuration and the database (libpq), then execs the
// supervisor binary (`atomic-data-publisher-supervisor`, no libpq or libcurl) in its own place,
// with the same argv: the PID, the command line and the open descriptors stay the same. This is
// what the two binaries agree on.

public enum SupervisorExec {
    /// Set by `run` just before the exec; the supervisor refuses to start without it (it would
    /// skip the checks) and removes it from its environment (workers do not inherit it).
    public static let marker = "ADP_SUPERVISOR_EXEC"

    /// The value of `--config` in `run`'s arguments (without the program name), as
    /// ArgumentParser accepted them: `--config PATH` or `--config=PATH`, before or after `run`;
    /// the last one wins. Nil when absent (the default configuration files).
    public static func configPath(in arguments: [String]) -> String? {
        var path: String?
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--config", index + 1 < arguments.count {
                path = arguments[index + 1]
                index += 2
                continue
            }
            if argument.hasPrefix("--config=") { path = String(argument.dropFirst("--config=".count)) }
            if argument == "--" { break }
            index += 1
        }
        return path
    }
}
