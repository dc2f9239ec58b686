// `atomic-data-publisher run` checks the configuration and the database (libpq), then execs the
// supervisor binary (`atomic-data-publisher-supervisor`, no libpq or libcurl) in its own place,
// with the same argv: the PID, the command line and the open descriptors stay the same. The
// configuration path travels in the environment, exactly as `run` resolved it.

public enum SupervisorExec {
    /// Set by `run` just before the exec, to the `--config` path it loaded ("" for the default
    /// files); the supervisor refuses to start without it (it would skip the checks) and removes
    /// it from its environment (workers do not inherit it).
    public static let marker = "ADP_SUPERVISOR_EXEC"

    public static func markerValue(configPath: String?) -> String {
        configPath ?? ""
    }

    /// The configuration path the marker carries (nil: the default files).
    public static func configPath(markerValue: String) -> String? {
        markerValue.isEmpty ? nil : markerValue
    }
}
