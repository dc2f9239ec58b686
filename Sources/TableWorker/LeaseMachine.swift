// A worker's hold on its table's lease, as a pure state machine (times passed in).
//
//   none ──(tried, not acquired)──▶ standby ──(tried, acquired)──▶ fencing ──(fence elapsed)──▶ leading
//     ▲                                                                                        │
//     └───────────────────────────────(connection lost: the lock went with it)─────────────────┘
//
// A worker sends requests only while `leading`. `fencing` lasts `fenceSeconds` after a takeover
// (the lease was seen held by another session), and after re-taking a lease this worker lost until
// `fenceSeconds` after its own last requests: the previous holder's requests may be in flight until
// its ingestor timeout, and a key's payloads must not overtake each other. A worker that finds the lease free at its first try does not
// wait: a single instance starts publishing at once (the one case left open, a holder that died
// less than a timeout before this worker's first try, is documented in the README). A takeover
// after a clean handoff (the previous holder stopped with nothing in flight and said so with its
// handoff lock, see TableWorker.handOver) does not wait either.

import Shared

struct LeaseMachine: Equatable, Sendable {
    enum State: Equatable, Sendable {
        case none
        case standby
        case fencing(until: Double, acquiredAt: Double)
        case leading(acquiredAt: Double)
    }

    let fenceSeconds: Double
    let retrySeconds: Double
    private(set) var state: State = .none
    /// Acquisitions after another session was seen holding the lease.
    private(set) var takeovers = 0
    private var sawAnotherHolder = false
    private var heldBefore = false

    init(fenceSeconds: Double, retrySeconds: Double) {
        self.fenceSeconds = max(0, fenceSeconds)
        self.retrySeconds = retrySeconds
    }

    var isHeld: Bool {
        switch state {
        case .fencing, .leading: true
        case .none, .standby: false
        }
    }

    var reported: LeaseState {
        switch state {
        case .leading: .leader
        case .standby, .fencing: .standby
        case .none: .none
        }
    }

    /// The result of a `pg_try_advisory_lock`. Returns when to try again if not acquired.
    /// `lastSendAt`: when this worker last had requests going out (its own requests abandoned
    /// with a lost session must be over before it publishes again).
    /// `cleanHandoff`: the previous holder let the lease go with no request in flight.
    mutating func tried(acquired: Bool, now: Double, lastSendAt: Double? = nil, cleanHandoff: Bool = false) -> Double? {
        guard acquired else {
            sawAnotherHolder = true
            state = .standby
            return now + retrySeconds
        }
        if sawAnotherHolder { takeovers += 1 }
        // Another holder seen: its requests may be in flight now. Only our own lease lost: our
        // last requests end a fence after we sent them, which may already be past.
        let ownFence = heldBefore ? max(0, (lastSendAt ?? now) + fenceSeconds - now) : 0
        let fence = sawAnotherHolder && !cleanHandoff ? fenceSeconds : ownFence
        sawAnotherHolder = false
        heldBefore = true
        state = fence > 0 ? .fencing(until: now + fence, acquiredAt: now) : .leading(acquiredAt: now)
        return nil
    }

    /// May requests be sent now? Moves fencing → leading once the fence has passed.
    mutating func mayPublish(now: Double) -> Bool {
        switch state {
        case .leading:
            return true
        case .fencing(let until, let acquiredAt) where now >= until:
            state = .leading(acquiredAt: acquiredAt)
            return true
        default:
            return false
        }
    }

    /// Seconds left in the fence, if fencing.
    func fenceRemaining(now: Double) -> Double? {
        if case .fencing(let until, _) = state { return max(0, until - now) }
        return nil
    }

    func heldSeconds(now: Double) -> Double {
        switch state {
        case .fencing(_, let at), .leading(let at): now - at
        default: 0
        }
    }

    /// This worker let the lease go (handed it over) with nothing in flight: it holds nothing now,
    /// and none of its own requests can be pending when it takes a lease again.
    mutating func released() {
        state = .none
        heldBefore = false
    }

    /// This worker let the lease go to another instance (spreading partitions): it stands by, and
    /// since another session may hold the lease in between, taking it again fences like a
    /// takeover (unless handed over cleanly).
    mutating func yielded() {
        released()
        sawAnotherHolder = true
        state = .standby
    }

    /// The session ended: the lock went with it.
    mutating func connectionLost() {
        state = .none  // heldBefore: the next acquisition fences again (someone may have led meanwhile)
    }
}
