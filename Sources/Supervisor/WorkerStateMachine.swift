// The lifecycle of one table's worker as a pure state machine (s6-supervise, postgres-nio style).
//
// Events are past-tense methods; each returns the actions the supervisor loop must execute.
// Time and randomness come in as arguments, so every transition is unit-tested without sleeping.
//
// Invariants:
// - Exit 78 (EX_CONFIG) is never restarted: the table is marked failed until the configuration
//   changes (SIGHUP) or the service restarts.
// - Any other unexpected death restarts after a backoff: 1 s doubling up to 60 s, with jitter,
//   never less than 1 s; the backoff resets once a worker has run for 60 s.
// - A stop escalates from TERM to KILL after the shutdown timeout.

import SharedCore

public enum WorkerSignal: Equatable, Sendable {
    case term, kill
}

public enum ExitReason: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public enum Class: Equatable, Sendable {
        case clean, transient, config, crash
    }

    public var classification: Class {
        switch self {
        case .exited(0): .clean
        case .exited(1): .transient
        case .exited(78): .config
        case .exited, .signaled: .crash
        }
    }

    public var description: String {
        switch self {
        case .exited(let code): "exit status \(code)"
        case .signaled(let sig): "killed by signal \(sig)"
        }
    }
}

public struct RestartPolicy: Equatable, Sendable {
    public var initialDelay = 1.0
    public var maxDelay = 60.0
    public var stableAfter = 60.0
    public init() {}

    public init(initialDelay: Double, maxDelay: Double) {
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
    }

    /// The delay before restart number `failures` (0-based): 1, 2, 4, ... 60 s, each scaled by a
    /// jitter factor in [0.75, 1.25) and never below `initialDelay`.
    public func delay(failures: Int, unit: Double) -> Double {
        let ceiling = Backoff(initial: initialDelay, maximum: maxDelay).ceiling(attempt: failures)
        return max(initialDelay, min(maxDelay, ceiling * (0.75 + 0.5 * unit)))
    }
}

public struct WorkerStateMachine: Equatable, Sendable {
    public enum State: Equatable, Sendable {
        case idle
        case starting(pid: Int32, since: Double)
        case running(pid: Int32, since: Double)
        case backingOff(until: Double)
        /// `killAt` is nil once KILL has been sent: then only the exit settles it.
        case stopping(pid: Int32, killAt: Double?)
        case stopped
        case failed(reason: String)

        public var name: String {
            switch self {
            case .idle: "idle"
            case .starting: "starting"
            case .running: "running"
            case .backingOff: "backing_off"
            case .stopping: "stopping"
            case .stopped: "stopped"
            case .failed: "failed"
            }
        }
    }

    public enum Action: Equatable, Sendable {
        case spawn
        case signal(pid: Int32, WorkerSignal)
        case log(String)
    }

    public private(set) var state: State = .idle
    public private(set) var restarts = 0
    public private(set) var consecutiveFailures = 0
    public private(set) var lastExit: ExitReason?
    public private(set) var lastError: String?
    public let policy: RestartPolicy

    public init(policy: RestartPolicy = RestartPolicy()) {
        self.policy = policy
    }

    public var pid: Int32? {
        switch state {
        case .starting(let pid, _), .running(let pid, _), .stopping(let pid, _): pid
        default: nil
        }
    }

    /// When the loop must call `timerFired` next, if ever.
    public var nextWake: Double? {
        switch state {
        case .backingOff(let until): until
        case .stopping(_, let killAt): killAt
        default: nil
        }
    }

    public var isSettled: Bool {
        switch state {
        case .idle, .stopped, .failed: true
        default: false
        }
    }

    // MARK: events

    public mutating func startRequested() -> [Action] {
        switch state {
        case .idle, .stopped, .failed:
            consecutiveFailures = 0
            return [.spawn]
        default:
            return []
        }
    }

    public mutating func spawned(pid: Int32, now: Double) -> [Action] {
        transition(to: .starting(pid: pid, since: now))
    }

    public mutating func spawnFailed(error: String, now: Double, unit: Double) -> [Action] {
        lastError = error
        return scheduleRestart(now: now, unit: unit, why: "spawn failed: \(error)")
    }

    public mutating func readyReceived(now: Double) -> [Action] {
        guard case .starting(let pid, let since) = state else { return [] }
        // Recovered: an error from an earlier run no longer describes the table.
        lastError = nil
        return transition(to: .running(pid: pid, since: since))
    }

    /// The running worker has sent nothing for too long (stopped, hung in a system call): kill it;
    /// its exit then restarts it like any crash.
    public mutating func stallDetected(silentSeconds: Double) -> [Action] {
        guard case .running(let pid, _) = state else { return [] }
        lastError = "stalled: no report from the worker for \(Int(silentSeconds)) s; killed and restarted"
        return [.signal(pid: pid, .kill), .log("stalled (no report for \(Int(silentSeconds)) s), sending KILL")]
    }

    public mutating func fatalReceived(error: String) {
        lastError = error
    }

    public mutating func exited(_ reason: ExitReason, now: Double, unit: Double) -> [Action] {
        lastExit = reason
        switch state {
        case .stopping:
            return transition(to: .stopped)
        case .starting(_, let since), .running(_, let since):
            if now - since >= policy.stableAfter { consecutiveFailures = 0 }
            if reason.classification == .config {
                return transition(to: .failed(reason: lastError ?? "configuration error (\(reason))"))
            }
            return scheduleRestart(now: now, unit: unit, why: "worker \(reason)")
        default:
            return []
        }
    }

    public mutating func timerFired(now: Double) -> [Action] {
        switch state {
        case .backingOff(let until) where now >= until:
            return [.spawn]
        case .stopping(let pid, let killAt?) where now >= killAt:
            // Stay in stopping, with no timer left: the exit is what settles it. (KILL is sent
            // once; the loop must not spin on a deadline in the past until the reap.)
            state = .stopping(pid: pid, killAt: nil)
            return [.signal(pid: pid, .kill), .log("worker did not stop in time, sending KILL")]
        default:
            return []
        }
    }

    public mutating func stopRequested(now: Double, timeout: Double) -> [Action] {
        switch state {
        case .starting(let pid, _), .running(let pid, _):
            return transition(to: .stopping(pid: pid, killAt: now + timeout)) + [.signal(pid: pid, .term)]
        case .idle, .backingOff:
            return transition(to: .stopped)
        case .stopping, .stopped, .failed:
            return []
        }
    }

    // MARK: helpers

    private mutating func scheduleRestart(now: Double, unit: Double, why: String) -> [Action] {
        let delay = policy.delay(failures: consecutiveFailures, unit: unit)
        consecutiveFailures += 1
        restarts += 1
        let until = now + delay
        return transition(to: .backingOff(until: until))
            + [.log("\(why); restarting in \(Int((delay * 1000).rounded())) ms")]
    }

    private mutating func transition(to next: State) -> [Action] {
        let from = state.name
        state = next
        return [.log("\(from) -> \(next.name)")]
    }
}
