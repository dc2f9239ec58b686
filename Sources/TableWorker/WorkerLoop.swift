// What the worker's loop does next, as a pure function of what it knows (times passed in), in the
// style of DeliveryPlan: TableWorker gathers the facts, asks, and performs the step. The lease's
// own rules (fence, the gate before every request, renewal) are LeaseMachine's; the delivery rules
// are DeliveryPlan's.
//
// Invariants, in the order they are checked:
// - Nothing is read or sent without a database session: the first step is to connect again.
// - While the supervisor reads nothing of this worker's reports (stopped: SIGSTOP, a debugger),
//   the worker lets its lease go, so a standby on another host takes the table, and tries for it
//   again only once the supervisor reads again.
// - Without the lease, the only step is to try for it (not during the cool-down after handing a
//   partition to another instance, so that instance can take it).
// - A partitioned table's leader looks at how the partitions spread at most every
//   `balanceIntervalSeconds`.
// - No batch is read during the fence, or while the circuit breaker is open: the changes wait in
//   the tracking table. Those waits are taken at most a second at a time, so signals, stats and
//   the lease renewal keep flowing.
// - After a batch: a table problem waits `tableProblemRetrySeconds`; a batch with work reads the
//   next at once; an empty one sleeps until a change (or polls from 10 ms up to the polling
//   interval while the wake-up flag cannot be taken).

struct WorkerLoop: Equatable, Sendable {
    struct Facts: Equatable, Sendable {
        var now: Double
        var connected: Bool
        var leaseHeld: Bool
        var leading: Bool
        var partitioned: Bool
        var cooldownUntil: Double = -.infinity
        var nextBalanceAt: Double = .infinity
        /// LeaseMachine.mayPublish at `now`.
        var mayPublish: Bool
        /// Seconds left in the fence, when fencing.
        var fenceRemaining: Double? = nil
        /// CircuitBreaker.waitTime at `now`.
        var breakerWait: Double? = nil
        /// The supervisor has read nothing of ours for the silence limit (TableWorker).
        var supervisorSilent = false
    }

    enum Step: Equatable, Sendable {
        case reconnect
        case takeLease
        /// Let the lease go: the supervisor does not read (see the header).
        case releaseLease
        case balancePartitions
        case pause(Double)
        case processBatch
    }

    enum AfterBatch: Equatable, Sendable {
        /// Read the next batch at once.
        case next
        case pause(Double)
        /// Sleep until a change is notified (TableWorker.sleepUntilChange).
        case sleepUntilChange
    }

    static let tableProblemRetrySeconds = 5.0

    static func next(_ f: Facts) -> Step {
        guard f.connected else { return .reconnect }
        if f.supervisorSilent { return f.leaseHeld ? .releaseLease : .pause(1.0) }
        guard f.leaseHeld else {
            return f.now < f.cooldownUntil ? .pause(f.cooldownUntil - f.now) : .takeLease
        }
        if f.partitioned && f.leading && f.now >= f.nextBalanceAt { return .balancePartitions }
        guard f.mayPublish else { return .pause(min(f.fenceRemaining ?? 0, 1.0)) }
        if let wait = f.breakerWait, wait > 0 { return .pause(min(wait, 1.0)) }
        return .processBatch
    }

    static func afterBatch(processed: Int, tableProblem: Bool) -> AfterBatch {
        if tableProblem { return .pause(tableProblemRetrySeconds) }
        return processed > 0 ? .next : .sleepUntilChange
    }

    /// The wake-up flag could not be taken: the next poll's delay, doubling from 10 ms.
    static func pollDelay(after previous: Double, pollingInterval: Double) -> Double {
        min(max(previous * 2, 0.01), pollingInterval)
    }
}
