// Executes a DeliveryPlan: sends through an IngestTransport, writes through a ChangeStore, and
// feeds every answer back to the plan. All decisions are the plan's; this type only performs them,
// so it is driven in unit tests by a fake transport, a fake store and a fake clock.
//
// Invariants:
// - Acknowledgements are written as answers arrive, in small groups (`ackGroupSize`, at most one
//   mid-wave write per `ackInterval`, and when the send wave ends), so progress survives a
//   connection that drops more often than a batch takes, while a fast stream does not stall on a
//   DELETE round trip every 32 answers (the worker sends nothing while it waits for one).
// - A write that fails because the database connection was lost is kept, in order, and applied on
//   the next connection (`flushPending`): an acknowledgement owed for a 2xx is never dropped.
// - Stopping mid-round abandons what is in flight and acknowledges only what was answered 2xx.
// - No request starts without the host's gate (`mayLaunch`), asked by the transport before every
//   request, retries included. When the lease is lost (the gate says so, a wait or a tick finds
//   it, or the ingestor answers 409: this grant's epoch is stale), nothing more is sent, and the
//   owed reschedules and dead letters are dropped: the rows may belong to another instance now.
//   Acknowledgements of 2xx answers are still owed: they are true whoever leads.
// - Batch mode: a request carries the documents of one packed group; its answer (BatchAnswer)
//   settles each of them, and the gate, the 409 and the acknowledgement rules apply per request.

import Shared

/// Sends `count` requests, at most `maxConcurrent` at once, asking `request(i)` for each just before
/// sending it; results in request order. `onComplete` sees each answer as it arrives and returns
/// false to stop launching the rest; `shouldAbort` abandons all. `mayLaunch` is asked right before
/// each request starts (HTTPClient.perform says how the real one orders these calls).
protocol IngestTransport: AnyObject {
    func perform(count: Int, request: (Int) -> HTTPRequest, maxConcurrent: Int, shouldAbort: () -> Bool, keepLaunching: () -> Bool,
                 mayLaunch: () -> Bool, onComplete: (Int, Result<HTTPResponse, HTTPTransportError>) -> Bool) -> [Result<HTTPResponse, HTTPTransportError>]
}

extension HTTPClient: IngestTransport {}

/// The tracking table's writes, as the runner needs them.
protocol ChangeStore: AnyObject {
    func acknowledge(ids: [Int64]) throws(PostgresError)
    func reschedule(ids: [Int64], error: String, afterSeconds: Double, attemptsMade: Int, permanentFailures: Int) throws(PostgresError)
    func deadLetter(ids: [Int64], error: String, attemptsMade: Int) throws(PostgresError)
}

/// What the runner needs from its surroundings: time, randomness, waiting and stopping.
protocol DeliveryHost: AnyObject {
    /// Monotonic seconds.
    var now: Double { get }
    /// Unix seconds (for HTTP-date Retry-After values).
    var unixNow: Double { get }
    func randomUnit() -> Double
    /// Sleep up to `seconds`, keeping stats flowing (and the lease renewed); `.go` when the time
    /// is up, else why the wait ended early.
    func wait(_ seconds: Double) -> TickVerdict
    /// Called while requests are in flight (at least every 100 ms).
    func tick(inFlight: Int) -> TickVerdict
    /// The gate before every request: `.go` to start it (LeaseMachine.launch).
    func mayLaunch() -> TickVerdict
    /// The breaker after each event, so every state change is logged as it happens.
    func observe(_ breaker: CircuitBreaker)
}

enum TickVerdict: Equatable {
    case go
    /// Asked to stop (SIGTERM, the supervisor is gone).
    case stop
    /// The table's lease could not be confirmed (the session is gone, or another grant is newer):
    /// send nothing more.
    case leaseLost
}

/// The ingestor's answer when a request's epoch is older than one it has seen for the lease.
let staleEpochStatus = 409

enum DeliveryEnd {
    case finished
    case stopRequested
    /// A write to the tracking table failed (usually the connection was lost: reconnect, then
    /// `flushPending`). What is owed stays in `pending`.
    case storeFailed(PostgresError)
    /// The lease is gone (why): what is owed to the tracking table is down to acknowledgements.
    case leaseLost(String)
}

final class DeliveryRunner {
    enum Write: Equatable {
        case acknowledge([Int64])
        case reschedule(ids: [Int64], error: String, afterSeconds: Double, attemptsMade: Int, permanentFailures: Int)
        case deadLetter(ids: [Int64], error: String, attemptsMade: Int)
    }

    struct Counters: Equatable {
        var successes = 0
        var failures = 0
        var retries = 0
        var changesPublished = 0
        var deadLettered = 0
    }

    let transport: IngestTransport
    let store: ChangeStore
    let host: DeliveryHost
    let maxConcurrent: Int
    let ackGroupSize: Int
    /// The least time between two mid-wave acknowledgement writes (seconds).
    let ackInterval: Double
    private var lastAckWrite = -Double.infinity
    var log: (DeliveryLogEvent) -> Void = { _ in }
    /// Writes owed to the tracking table, oldest first.
    private(set) var pending: [Write] = []
    private var ackBuffer: [Int64] = []
    private(set) var counters = Counters()
    private(set) var inFlight = 0
    /// Whether the last `run` gave up on requests already sent (a stop or a lost lease mid-wave):
    /// the ingestor may still be working on them, so the lease may not be handed over cleanly.
    private(set) var abandonedInFlight = false
    /// When asked to stop mid-wave, how long the requests already in flight may take to be
    /// answered (nothing new starts meanwhile); their answers are applied, so a graceful stop
    /// leaves nothing in flight. 0: abandon them at once.
    var stopDrainSeconds = 0.0
    /// `ingestor.timeout_seconds`, for the text of a timeout (ResponseClassifier).
    var requestTimeoutSeconds = 0
    private enum Lost {
        case store(PostgresError)
        case lease(String)
    }
    private var lost: Lost?

    init(transport: IngestTransport, store: ChangeStore, host: DeliveryHost, maxConcurrent: Int, ackGroupSize: Int = 32,
         ackInterval: Double = 0.05) {
        self.transport = transport
        self.store = store
        self.host = host
        self.maxConcurrent = max(1, maxConcurrent)
        self.ackGroupSize = max(1, ackGroupSize)
        self.ackInterval = max(0, ackInterval)
    }

    /// Deliver `requests` (one per plan item) until the plan is finished, a stop is requested or
    /// the database is lost. Returns the plan (with its breaker) and how it ended.
    func run(_ plan: inout DeliveryPlan, requests: [HTTPRequest]) -> DeliveryEnd {
        run(&plan, request: { requests[$0] })
    }

    /// The same, with item `i`'s request made by `request(i)` each time it is sent, so only the
    /// requests in flight exist (a batch's bodies are never all held at once). `request` must give the same request every time it
    /// is asked for the same item (a retry resends the same body under the same Idempotency-Key).
    func run(_ plan: inout DeliveryPlan, request: (Int) -> HTTPRequest) -> DeliveryEnd {
        run(&plan, size: { _ in 0 }, request: { request($0[0]) }, outcomes: { [self] _, response in
            let outcome = ResponseClassifier.outcome(response, unixNow: host.unixNow, timeoutSeconds: requestTimeoutSeconds)
            return ([outcome], false)
        })
    }

    /// Batch mode (the plan has `limits`): item `i`'s document is `document(i)` (the same bytes
    /// every time it is asked, as above), and a request carries several, made by `request`. A
    /// document is built when the plan packs it (its size decides the packing) and kept only
    /// until its request is made, so only the documents of one wave exist at once.
    func run(_ plan: inout DeliveryPlan, document: (Int) -> Payload, request: ([Payload]) -> HTTPRequest) -> DeliveryEnd {
        var built: [Int: Payload] = [:]
        var payloadIds: [Int: String] = [:]
        return run(&plan, size: { index in
            let payload = built[index] ?? document(index)
            built[index] = payload
            payloadIds[index] = payload.id
            return payload.body.count
        }, request: { indices in
            let payloads = indices.map { index in built.removeValue(forKey: index) ?? document(index) }
            return request(payloads)
        }, outcomes: { [self] indices, response in
            BatchAnswer.outcomes(response, documentIds: indices.map { payloadIds[$0] ?? "" }, unixNow: host.unixNow, timeoutSeconds: requestTimeoutSeconds)
        }, sent: { indices in
            // Documents packed but not sent now (the half-open probe takes one request) are built
            // again when their turn comes: only a wave's documents are held.
            for index in built.keys where !indices.contains(index) { built[index] = nil }
        })
    }

    /// The loop of both modes: `size(i)` for the plan's packing, `request(items)` makes the
    /// request of those items, `outcomes(items, response)` says what became of each of them and
    /// whether the answer refused this grant's epoch; `sent` sees which items a wave carries.
    private func run(_ plan: inout DeliveryPlan, size: (Int) -> Int, request: ([Int]) -> HTTPRequest,
                     outcomes: ([Int], Result<HTTPResponse, HTTPTransportError>) -> (outcomes: [DeliveryOutcome], staleEpoch: Bool),
                     sent: (Set<Int>) -> Void = { _ in }) -> DeliveryEnd {
        lost = nil
        abandonedInFlight = false
        var stop = false
        var actions = plan.started(now: host.now, unit: host.randomUnit(), size: size)
        while true {
            host.observe(plan.breaker)
            execute(actions, plan: plan)
            for action in actions {
                let requests: [[Int]]
                switch action {
                case .send(let indices): requests = indices.map { [$0] }
                case .sendRequests(let groups): requests = groups
                default: continue
                }
                sent(Set(requests.joined()))
                counters.retries += requests.joined().filter { plan.tries[$0] > 1 }.count
                inFlight = min(requests.count, maxConcurrent)
                var answered = 0
                var stopAt: Double?
                let results = transport.perform(count: requests.count, request: { request(requests[$0]) }, maxConcurrent: maxConcurrent, shouldAbort: { [self] in
                    if lost != nil { return true }
                    switch host.tick(inFlight: inFlight) {
                    case .go: break
                    case .stop: if stopAt == nil { stopAt = host.now }
                    case .leaseLost: leaseLost("the table's lease could not be confirmed")
                    }
                    if let stopAt, host.now - stopAt >= stopDrainSeconds { stop = true }
                    if (stop || lost != nil) && inFlight > 0 { abandonedInFlight = true }
                    return stop || lost != nil
                }, keepLaunching: { [self] in stopAt == nil && lost == nil }, mayLaunch: { [self] in
                    guard lost == nil else { return false }
                    switch host.mayLaunch() {
                    case .go: return true
                    case .stop: if stopAt == nil { stopAt = host.now }
                    case .leaseLost: leaseLost("the table's lease could not be confirmed before sending")
                    }
                    return false
                }, onComplete: { [self] position, response in
                    answered += 1
                    let indices = requests[position]
                    let answer = outcomes(indices, response)
                    var staleEpoch = answer.staleEpoch
                    if case .success(let r) = response, r.status == staleEpochStatus { staleEpoch = true }
                    if staleEpoch {
                        // Not these keys' failure: another grant of the lease is newer than ours.
                        leaseLost("the ingestor refused this grant's epoch as stale (HTTP 409)")
                        inFlight = max(0, min(requests.count - answered, maxConcurrent))
                        return false
                    }
                    note(answer.outcomes, response: response, items: indices.map { plan.items[$0] })
                    execute(plan.requestAnswered(indices, answer.outcomes, now: host.now, unit: host.randomUnit()), plan: plan)
                    host.observe(plan.breaker)
                    inFlight = max(0, min(requests.count - answered, maxConcurrent))
                    // An open breaker stops the rest of the wave from being sent at all.
                    return plan.breaker.waitTime(now: host.now) == nil && lost == nil
                })
                inFlight = 0
                if stopAt != nil { stop = true }  // drained (or abandoned): stop after this wave
                // Requests that were not answered: never started, or abandoned in flight.
                for (position, indices) in requests.enumerated() {
                    guard case .failure(let error) = results[position], error.code == HTTPClient.notSentCode else { continue }
                    for index in indices where plan.states[index] == .inFlight {
                        execute(plan.notSent(index, now: host.now, unit: host.randomUnit()), plan: plan)
                    }
                }
            }
            flushAcks()
            if stop || plan.isFinished || lost != nil { break }
            actions = plan.due(now: host.now, size: size)
            if actions.isEmpty {
                guard let wake = plan.nextWake else { break }
                switch host.wait(max(0, wake - host.now)) {
                case .go: break
                case .stop: stop = true
                case .leaseLost: leaseLost("the table's lease was lost while a retry waited")
                }
                if stop || lost != nil { break }
                actions = plan.due(now: host.now, size: size)
            }
        }
        if stop || lost != nil {
            execute(plan.stopped(unit: host.randomUnit()), plan: plan)
            flushAcks()
        }
        switch lost {
        case .store(let error): return .storeFailed(error)
        case .lease(let why): return .leaseLost(why)
        case nil: return stop ? .stopRequested : .finished
        }
    }

    /// The lease is gone: send nothing more, and owe only acknowledgements from now on.
    private func leaseLost(_ why: String) {
        if case .lease = lost { return }
        lost = .lease(why)
        dropOwedExceptAcknowledgements()
    }

    /// Drop everything owed: the tracking table they were for was dropped and made again, and its
    /// ids belong to other changes now.
    func dropAllOwed() {
        pending.removeAll()
        ackBuffer.removeAll()
    }

    /// Drop the owed reschedules and dead letters (the lease was lost: the rows may be another
    /// instance's to retry now, and a write onto them would undo its progress); acknowledgements
    /// of 2xx answers stay owed. Returns how many writes were dropped.
    @discardableResult
    func dropOwedExceptAcknowledgements() -> Int {
        let before = pending.count
        pending.removeAll { if case .acknowledge = $0 { false } else { true } }
        return before - pending.count
    }

    /// Apply what is owed to the tracking table (after a reconnect). Throws what the store throws.
    func flushPending() throws(PostgresError) {
        queueAcks()
        while let write = pending.first {
            switch write {
            case .acknowledge(let ids):
                try store.acknowledge(ids: ids)
            case let .reschedule(ids, error, after, attempts, permanent):
                try store.reschedule(ids: ids, error: error, afterSeconds: after, attemptsMade: attempts, permanentFailures: permanent)
            case let .deadLetter(ids, error, attempts):
                try store.deadLetter(ids: ids, error: error, attemptsMade: attempts)
            }
            pending.removeFirst()
        }
    }

    // MARK: -

    private func execute(_ actions: [DeliveryAction], plan: DeliveryPlan) {
        for action in actions {
            switch action {
            case .send, .sendRequests:
                break  // sends are performed by `run`
            case .acknowledge(let ids):
                counters.successes += 1
                counters.changesPublished += ids.count
                ackBuffer += ids
                if ackBuffer.count >= ackGroupSize && host.now - lastAckWrite >= ackInterval { flushAcks() }
            case let .reschedule(index, error, after, attempts, permanent):
                if case .lease = lost { continue }  // owed only under the lease
                pending.append(.reschedule(ids: plan.items[index].ids, error: error, afterSeconds: after, attemptsMade: attempts, permanentFailures: permanent ? 1 : 0))
                flush()
            case let .deadLetter(index, error, attempts):
                if case .lease = lost { continue }
                counters.deadLettered += plan.items[index].ids.count
                log(.deadLettered(item: plan.items[index], error: error))
                pending.append(.deadLetter(ids: plan.items[index].ids, error: error, attemptsMade: attempts))
                flush()
            }
        }
    }

    private func queueAcks() {
        if !ackBuffer.isEmpty {
            lastAckWrite = host.now
            pending.append(.acknowledge(ackBuffer))
            ackBuffer = []
        }
    }

    private func flushAcks() {
        queueAcks()
        flush()
    }

    private func flush() {
        if case .store = lost { return }
        do throws(PostgresError) {
            try flushPending()
        } catch {
            if lost == nil { lost = .store(error) }
            if !error.isConnectionLost { log(.storeFailed(error)) }
        }
    }

    /// Counts each document's outcome; logs a failure once per request when the whole request
    /// failed (one line for a hundred documents that one 503 failed), else once per document.
    private func note(_ outcomes: [DeliveryOutcome], response: Result<HTTPResponse, HTTPTransportError>, items: [DeliveryItem]) {
        let wholeRequestFailed: Bool
        if case .success(let r) = response { wholeRequestFailed = !r.isSuccess } else { wholeRequestFailed = true }
        for (position, (outcome, item)) in zip(outcomes, items).enumerated() {
            switch outcome {
            case .delivered:
                if case .success(let r) = response { log(.published(seconds: r.seconds, item: item)) }
            case .rejected(let error), .failed(let error, _):
                counters.failures += 1
                if !wholeRequestFailed || position == 0 {
                    log(.failed(error: error, response: response, item: item, documents: wholeRequestFailed ? items.count : 1))
                }
            }
        }
    }
}

enum DeliveryLogEvent {
    case published(seconds: Double, item: DeliveryItem)
    /// `documents`: how many documents the failed request carried (1 in single mode, or for a
    /// per-item failure); the line names the first.
    case failed(error: String, response: Result<HTTPResponse, HTTPTransportError>, item: DeliveryItem, documents: Int)
    case deadLettered(item: DeliveryItem, error: String)
    case storeFailed(PostgresError)
}
