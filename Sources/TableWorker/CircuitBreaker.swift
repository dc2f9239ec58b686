// The ingestor circuit breaker, a pure state machine with the clock passed in.
//
// closed ──(threshold consecutive transient failures)──▶ open ──(reset time elapsed)──▶ half_open
//   ▲                                                      ▲                                │
//   └──────────────(the probe succeeds)────────────────────┼───────(the probe fails)────────┘
//
// Only transient failures count (transport errors, timeouts, 5xx, 408, 429): a 400 for one bad
// payload says nothing about the ingestor's health. While open, the worker sends nothing and the
// changes wait in the tracking table; half-open lets exactly one request through.

import Shared

struct CircuitBreaker: Equatable, Sendable {
    enum State: Equatable, Sendable {
        case closed
        case open(until: Double)
        case halfOpen
    }

    let failureThreshold: Int
    let resetSeconds: Double
    private(set) var state: State = .closed
    private(set) var consecutiveFailures = 0
    /// How many times the breaker opened: for metrics and tests.
    private(set) var timesOpened = 0

    init(failureThreshold: Int, resetSeconds: Double) {
        self.failureThreshold = max(1, failureThreshold)
        self.resetSeconds = resetSeconds
    }

    /// The state as stats and /health report it.
    var reported: BreakerState {
        switch state {
        case .closed: .closed
        case .open: .open
        case .halfOpen: .halfOpen
        }
    }

    /// How many requests may be sent now: unlimited when closed, one probe when the reset time has
    /// passed, none while open. Moves open → half_open when due.
    mutating func permits(now: Double) -> Int? {
        switch state {
        case .closed:
            return nil
        case .open(let until):
            if now < until { return 0 }
            state = .halfOpen
            return 1
        case .halfOpen:
            return 1
        }
    }

    /// Seconds until a probe may be sent, when open.
    func waitTime(now: Double) -> Double? {
        if case .open(let until) = state { return max(0, until - now) }
        return nil
    }

    mutating func recordSuccess() {
        consecutiveFailures = 0
        state = .closed
    }

    mutating func recordTransientFailure(now: Double) {
        consecutiveFailures += 1
        switch state {
        case .halfOpen:
            open(now: now)
        case .closed where consecutiveFailures >= failureThreshold:
            open(now: now)
        default:
            break
        }
    }

    private mutating func open(now: Double) {
        state = .open(until: now + resetSeconds)
        timesOpened += 1
    }
}
