// The worker's delivery rules as a pure state machine (DESIGN.md section 5), in the style of the
// supervisor's WorkerStateMachine: events are past-tense methods that return the actions the
// runner must execute; time and randomness come in as arguments, so every rule is unit-tested
// without a database, an ingestor or a clock.
//
// Invariants:
// - A key is in flight at most once: an item is `queued`, `inFlight` or `done`, and only a queued
//   item whose retry time has come is sent.
// - A 2xx acknowledges exactly the tracking ids its payload covered, and nothing else ever does.
// - A permanent failure (4xx, a query error for that key) settles only its own key: it is never
//   retried in the batch, is rescheduled with backoff, and is dead-lettered once the key has
//   failed permanently `deadLetterAfter` times. Transient failures never count towards that.
// - Transient failures (transport errors, timeouts, 408, 429, 5xx) are retried in the batch up to
//   `maxRetries` times (full jitter, or `Retry-After` floored at the first backoff), then
//   rescheduled in the table with every try recorded (`attemptsMade`).
// - The circuit breaker decides how many may be sent; once it opens, keys that already failed are
//   rescheduled and keys never sent are left untouched in the table.
// - On shutdown nothing is acknowledged that was not answered 2xx.
// - Batch mode (`limits` set): the items sent at once are packed into requests of at most
//   `limits.documents` items and `limits.bytes` of body (an item larger alone goes alone). Each
//   item is in one request at most, so a key is never twice in one request nor in two requests
//   in flight. The breaker counts requests, not documents (a failed request of 100 documents is
//   one failure, as one failed document is in single mode), and its permits are requests: the
//   half-open probe is one request. A request's transient failure retries its documents together,
//   after one delay (Retry-After applies to the whole request), so the retry resends the same set.

import Shared

struct DeliveryPolicy: Equatable, Sendable {
    /// Immediate retries after the first try, within one batch.
    var maxRetries: Int
    var backoff: Backoff
    /// Permanent failures of one key before its rows move to the dead letters.
    var deadLetterAfter: Int
}

/// What became of one request (see `ResponseClassifier`).
enum DeliveryOutcome: Equatable, Sendable {
    case delivered
    /// Permanent for this payload: retrying the same payload cannot help (4xx, 3xx).
    case rejected(String)
    /// Transient: retry later; `retryAfter` is the ingestor's Retry-After in seconds, if any.
    case failed(String, retryAfter: Double?)
}

/// One key's payload in a batch.
struct DeliveryItem: Equatable, Sendable {
    var ids: [Int64]
    /// For log lines only.
    var primaryKey = ""
    /// Tries recorded in the tracking table before this batch.
    var attempts: Int = 0
    var permanentFailures: Int = 0
    /// Settled before anything is sent: the atomic data query failed for this key.
    var knownFailure: DeliveryOutcome? = nil
}

/// Batch mode's packing: the most documents and bytes of body per request.
struct RequestLimits: Equatable, Sendable {
    var documents: Int
    var bytes: Int

    /// Greedy packing in order: an item joins the current request while it stays within both
    /// limits (`size(i)` is item i's body; a JSON array adds one byte per item and one more);
    /// an item larger than `bytes` alone still goes, alone.
    func pack(_ indices: [Int], size: (Int) -> Int) -> [[Int]] {
        var requests: [[Int]] = []
        var current: [Int] = []
        var bytes = 1
        for index in indices {
            let itemBytes = size(index) + 1
            if !current.isEmpty && (current.count >= documents || bytes + itemBytes > self.bytes) {
                requests.append(current)
                current = []
                bytes = 1
            }
            current.append(index)
            bytes += itemBytes
        }
        if !current.isEmpty { requests.append(current) }
        return requests
    }
}

enum DeliveryAction: Equatable, Sendable {
    case send([Int])
    /// Batch mode: one request per inner list (its items' documents, in that order).
    case sendRequests([[Int]])
    case acknowledge([Int64])
    case reschedule(item: Int, error: String, afterSeconds: Double, attemptsMade: Int, permanent: Bool)
    case deadLetter(item: Int, error: String, attemptsMade: Int)
}

struct DeliveryPlan: Sendable {
    enum ItemState: Equatable, Sendable {
        case queued(notBefore: Double)
        case inFlight
        case done
    }

    let items: [DeliveryItem]
    let policy: DeliveryPolicy
    /// Batch mode when set.
    let limits: RequestLimits?
    private(set) var breaker: CircuitBreaker
    private(set) var states: [ItemState]
    /// Requests sent per item in this batch.
    private(set) var tries: [Int]
    private var lastFailure: [Int: (error: String, retryAfter: Double?)] = [:]

    init(items: [DeliveryItem], policy: DeliveryPolicy, breaker: CircuitBreaker, limits: RequestLimits? = nil) {
        self.items = items
        self.policy = policy
        self.limits = limits
        self.breaker = breaker
        states = Array(repeating: .queued(notBefore: 0), count: items.count)
        tries = Array(repeating: 0, count: items.count)
    }

    var inFlight: Int { states.filter { $0 == .inFlight }.count }
    var isFinished: Bool { !states.contains { $0 != .done } }

    /// When the next queued item may be sent (a retry's time), if any is queued.
    var nextWake: Double? {
        states.compactMap { if case .queued(let t) = $0 { t } else { nil } }.min()
    }

    // MARK: events

    /// The batch begins: settle the keys whose query already failed, then send what may be sent.
    /// `size(i)`: item i's body in bytes (batch mode packs by it).
    mutating func started(now: Double, unit: Double, size: (Int) -> Int = { _ in 0 }) -> [DeliveryAction] {
        var actions: [DeliveryAction] = []
        for (index, item) in items.enumerated() {
            guard let failure = item.knownFailure else { continue }
            states[index] = .done
            switch failure {
            case .rejected(let error):
                actions.append(permanentFailure(index, error: error, attemptsMade: 1, unit: unit))
            case .failed(let error, let retryAfter):
                actions.append(.reschedule(item: index, error: error, afterSeconds: rescheduleDelay(index, retryAfter: retryAfter, unit: unit),
                                           attemptsMade: 1, permanent: false))
            case .delivered:
                break
            }
        }
        return actions + due(now: now, size: size)
    }

    /// Send every queued item whose time has come, as far as the breaker permits.
    mutating func due(now: Double, size: (Int) -> Int = { _ in 0 }) -> [DeliveryAction] {
        let ready = states.indices.filter { if case .queued(let t) = states[$0] { t <= now } else { false } }
        if ready.isEmpty { return [] }
        // Half-open lets exactly one request through: the probe must answer first.
        if case .halfOpen = breaker.state, inFlight > 0 { return [] }
        let permits = breaker.permits(now: now)
        let requests = limits.map { $0.pack(ready, size: size) } ?? ready.map { [$0] }
        let sending = permits.map { Array(requests.prefix($0)) } ?? requests
        if sending.isEmpty { return settleBlocked(unit: 0.5) }
        for index in sending.joined() {
            states[index] = .inFlight
            tries[index] += 1
        }
        return limits == nil ? [.send(sending.map { $0[0] })] : [.sendRequests(sending)]
    }

    /// The answer to item `index` arrived (single mode: its own request).
    mutating func responded(_ index: Int, _ outcome: DeliveryOutcome, now: Double, unit: Double) -> [DeliveryAction] {
        requestAnswered([index], [outcome], now: now, unit: unit)
    }

    /// The answer to one request arrived: `outcomes[k]` is what became of the document of item
    /// `indices[k]` (the request's own outcome for every one of them, unless the ingestor answered
    /// per item). The request counts once towards the breaker: a success when any document was
    /// delivered, a transient failure when none was and any failed transiently.
    mutating func requestAnswered(_ indices: [Int], _ outcomes: [DeliveryOutcome], now: Double, unit: Double) -> [DeliveryAction] {
        let answered = indices.indices.filter { states[indices[$0]] == .inFlight }
        if answered.isEmpty { return [] }
        var delivered = false, transient = false
        var retryAfter: Double?
        for k in answered {
            switch outcomes[k] {
            case .delivered: delivered = true
            case .failed(_, let after):
                transient = true
                if let after { retryAfter = max(retryAfter ?? 0, after) }
            case .rejected: break
            }
        }
        if delivered {
            breaker.recordSuccess()
        } else if transient {
            breaker.recordTransientFailure(now: now)
        }
        let blocked = breaker.waitTime(now: now) != nil
        // One delay for the request's transient failures, so they are retried together.
        let tried = answered.map { tries[indices[$0]] }.max() ?? 1
        let retryDelay = retryAfter.map { clamp($0) } ?? policy.backoff.fullJitter(attempt: tried - 1, unit: unit)
        var actions: [DeliveryAction] = []
        for k in answered {
            let index = indices[k]
            switch outcomes[k] {
            case .delivered:
                states[index] = .done
                lastFailure[index] = nil
                actions.append(.acknowledge(items[index].ids))
            case .rejected(let error):
                states[index] = .done
                actions.append(permanentFailure(index, error: error, attemptsMade: tries[index], unit: unit))
            case .failed(let error, let after):
                lastFailure[index] = (error, after)
                if tries[index] <= policy.maxRetries, !blocked {
                    states[index] = .queued(notBefore: now + retryDelay)
                } else {
                    states[index] = .done
                    actions.append(.reschedule(item: index, error: error, afterSeconds: rescheduleDelay(index, retryAfter: after, unit: unit),
                                               attemptsMade: tries[index], permanent: false))
                }
            }
        }
        if blocked && transient { actions += settleBlocked(unit: unit) }
        return actions
    }

    /// A request of the last `.send` was never started (the transport stopped launching).
    mutating func notSent(_ index: Int, now: Double, unit: Double) -> [DeliveryAction] {
        guard states[index] == .inFlight else { return [] }
        tries[index] -= 1
        states[index] = .queued(notBefore: now)
        return breaker.waitTime(now: now) != nil ? settleBlocked(unit: unit) : []
    }

    /// Stopping: in-flight answers will never be read. Nothing more is acknowledged; keys that
    /// failed in this batch are rescheduled with every try recorded; the rest stay as they are.
    mutating func stopped(unit: Double) -> [DeliveryAction] {
        var actions: [DeliveryAction] = []
        for index in states.indices where states[index] != .done {
            states[index] = .done
            if let failure = lastFailure[index] {
                actions.append(.reschedule(item: index, error: failure.error, afterSeconds: rescheduleDelay(index, retryAfter: failure.retryAfter, unit: unit),
                                           attemptsMade: tries[index], permanent: false))
            }
        }
        return actions
    }

    // MARK: rules

    private func permanentFailure(_ index: Int, error: String, attemptsMade: Int, unit: Double) -> DeliveryAction {
        let item = items[index]
        if item.permanentFailures + 1 >= policy.deadLetterAfter {
            return .deadLetter(item: index, error: error, attemptsMade: attemptsMade)
        }
        return .reschedule(item: index, error: error, afterSeconds: policy.backoff.delay(attempt: item.permanentFailures, unit: unit),
                           attemptsMade: attemptsMade, permanent: true)
    }

    /// The delay before a rescheduled key is read again: the ingestor's Retry-After (floored at
    /// the first backoff, capped at the maximum), else the growing backoff.
    private func rescheduleDelay(_ index: Int, retryAfter: Double?, unit: Double) -> Double {
        retryAfter.map { clamp($0) } ?? policy.backoff.delay(attempt: items[index].attempts, unit: unit)
    }

    private func clamp(_ retryAfter: Double) -> Double {
        min(max(retryAfter, policy.backoff.initial), policy.backoff.maximum)
    }

    /// The breaker is open: keys that failed here are rescheduled; keys never sent stay untouched.
    private mutating func settleBlocked(unit: Double) -> [DeliveryAction] {
        var actions: [DeliveryAction] = []
        for index in states.indices {
            guard case .queued = states[index] else { continue }
            states[index] = .done
            if let failure = lastFailure[index] {
                actions.append(.reschedule(item: index, error: failure.error, afterSeconds: rescheduleDelay(index, retryAfter: failure.retryAfter, unit: unit),
                                           attemptsMade: tries[index], permanent: false))
            }
        }
        return actions
    }
}
