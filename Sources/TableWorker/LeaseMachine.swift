// A worker's hold on its table's lease, as a pure state machine (times passed in).
//
//   none ──(tried, not acquired)──▶ standby ──(tried, acquired)──▶ fencing ──(fence elapsed)──▶ leading
//     ▲                                                                                        │
//     └───────────────────────────────(connection lost: the lock went with it)─────────────────┘
//
// A worker sends requests only while `leading`. `fencing` lasts `fenceSeconds` after a takeover
// (the lease was seen held by another session), and after re-taking a lease this worker lost until
// `fenceSeconds` after it abandoned requests in flight (none abandoned: no wait): the previous
// holder's requests may be in flight until its ingestor timeout, and a key's payloads must not
// overtake each other.
//
// The one gate (`launch(now:)`), asked by the transport before every request it starts, retries
// inside a batch included: a request starts only while leading under an epoch, and only within
// `launchBoundSeconds` of the last time the grant was confirmed (a renewal that succeeded on the
// session, timed from before it was sent). The argument: our session held the lock at the
// confirmation time c; a successor takes the lock only after our session ends, so after c, and
// sends nothing before c + fence. Our last request starts before c + bound and is over (answered
// or timed out) before c + bound + ingestor timeout. With bound <= fence - ingestor timeout, every
// request of ours is over before the successor's first. What this cannot cover is a process paused
// between the gate and the send, or with a request half sent: the epoch on every request
// (X-Publisher-Epoch) lets the ingestor refuse those. A worker that finds the lease free at its first try does not
// wait: a single instance starts publishing at once (the one case left open, a holder that died
// less than a timeout before this worker's first try, is documented in docs/operations.md). A takeover
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

    enum Launch: Equatable, Sendable {
        /// Start the request.
        case go
        /// Confirm the grant on the session first (then `renewed(at:)`, or `connectionLost()`).
        case confirmFirst
        /// Not leading under an epoch: start nothing.
        case refuse
    }

    let fenceSeconds: Double
    let retrySeconds: Double
    /// The leader renews its grant at least this often, also while idle (a standby's expiry
    /// check reads the renewal).
    static let renewSeconds = 2.0
    /// A request may start at most this long after the last confirmation: fence - ingestor
    /// timeout (the argument above), at most `renewSeconds`, and at least 0.2 s (a fence shorter
    /// than the timeout plus 0.2 s gives up that guarantee; docs/delivery.md says so).
    let launchBoundSeconds: Double
    private(set) var state: State = .none
    /// This grant's epoch (TrackingSchema.grantEpoch); nil while no grant is held.
    private(set) var epoch: Int64?
    /// When the grant was last confirmed (monotonic, taken before the confirming statement was sent).
    private(set) var confirmedAt = -Double.infinity
    /// Acquisitions after another session was seen holding the lease.
    private(set) var takeovers = 0
    private var sawAnotherHolder = false
    private var heldBefore = false

    init(fenceSeconds: Double, retrySeconds: Double, requestTimeoutSeconds: Double = 0) {
        self.fenceSeconds = max(0, fenceSeconds)
        self.retrySeconds = retrySeconds
        launchBoundSeconds = min(Self.renewSeconds, max(0.2, self.fenceSeconds - requestTimeoutSeconds))
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
    /// `abandonedAt`: when this worker last gave up on requests in flight (they must be over
    /// before it publishes again); nil when it abandoned none, so nothing of its own can be in
    /// flight (a blip of the database while idle costs no fence).
    /// `cleanHandoff`: the previous holder let the lease go with no request in flight.
    mutating func tried(acquired: Bool, now: Double, abandonedAt: Double? = nil, cleanHandoff: Bool = false) -> Double? {
        guard acquired else {
            sawAnotherHolder = true
            state = .standby
            return now + retrySeconds
        }
        if sawAnotherHolder { takeovers += 1 }
        // Another holder seen: its requests may be in flight now. Only our own lease lost: our
        // last requests end a fence after we sent them, which may already be past.
        let ownFence = heldBefore ? max(0, (abandonedAt.map { $0 + fenceSeconds } ?? now) - now) : 0
        let fence = sawAnotherHolder && !cleanHandoff ? fenceSeconds : ownFence
        sawAnotherHolder = false
        heldBefore = true
        state = fence > 0 ? .fencing(until: now + fence, acquiredAt: now) : .leading(acquiredAt: now)
        return nil
    }

    /// The grant's epoch was written (right after the lock was taken, on the same session).
    mutating func granted(epoch: Int64, at now: Double) {
        self.epoch = epoch
        confirmedAt = now
    }

    /// A renewal sent at `at` found the grant current.
    mutating func renewed(at: Double) {
        confirmedAt = max(confirmedAt, at)
    }

    /// Is a renewal due (the leader renews every `renewSeconds`, sending or not)?
    func renewalDue(now: Double) -> Bool {
        isHeld && epoch != nil && now - confirmedAt >= Self.renewSeconds
    }

    /// The gate before every request (see the header).
    mutating func launch(now: Double) -> Launch {
        guard epoch != nil, mayPublish(now: now) else { return .refuse }
        return now - confirmedAt < launchBoundSeconds ? .go : .confirmFirst
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
        epoch = nil
        confirmedAt = -.infinity
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
        epoch = nil
        confirmedAt = -.infinity
    }
}
