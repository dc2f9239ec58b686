// atomic-data-publisher backfill --table T [--where SQL] [--batch N] [--rate N/s] [--restart]
// (publishing rows that existed before the trigger): enqueue the keys of rows that already exist, chunk by chunk, as tracking rows with
// operation 'B'; the running service publishes them like any change. The SQL and its invariants
// (one statement per chunk, exactly-once progress, no locks beyond ACCESS SHARE on the
// application's table) live in TrackingSchema+Backfill.swift.
//
// Rerunning the same command (same table and --where) resumes after the last committed chunk;
// --restart starts over. Ctrl-C (or SIGTERM) stops after the chunk in flight, exit 130.
// Exit statuses: 0 done; 78 configuration (unknown table, a --where that does not work, missing
// grants); 1 transient (the database went away: rerun to resume); 64 bad arguments.

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

struct Backfill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Enqueue existing rows of a watched table for publishing (operation \"backfill\"); resumable.")
    @OptionGroup var global: GlobalOptions
    @Option(name: .long, help: "The watched table.") var table: String
    @Option(name: .long, help: ArgumentHelp("Only rows matching this SQL condition (the operator's own SQL, like atomic_data_query).", valueName: "SQL"))
    var `where`: String?
    @Option(name: .long, help: "Rows per chunk (one short transaction each).") var batch = 1000
    @Option(name: .long, help: ArgumentHelp("At most this many rows per second, e.g. 2000/s (default: as fast as it goes).", valueName: "N/s"))
    var rate: String?
    @Flag(name: .long, help: "Discard an unfinished earlier run with the same --where and start from the first key.") var restart = false
    @Option(name: .long, help: .hidden) var progressInterval = 5.0

    func validate() throws {
        if table.trimmingWhitespace().isEmpty { throw ValidationError("--table must name a watched table") }
        if batch < 1 || batch > 1_000_000 { throw ValidationError("--batch must be between 1 and 1000000, found \(batch)") }
        if let rate, BackfillPacer.parse(rate) == nil { throw ValidationError("--rate must be a positive number of rows per second such as 2000/s, found '\(rate)'") }
        if let w = self.where, w.trimmingWhitespaceAndNewlines().isEmpty {
            throw ValidationError("--where is empty: leave it out to backfill every row")
        }
        if progressInterval <= 0 { throw ValidationError("--progress-interval must be positive") }
    }

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        let watched = CommandSupport.tables(config, named: table)[0]
        let schema = TrackingSchema(table: watched)
        let name = watched.qualifiedName
        let whereClause = (self.where ?? "").trimmingWhitespaceAndNewlines()
        let pacer = BackfillPacer(rowsPerSecond: rate.flatMap(BackfillPacer.parse))
        let db = CommandSupport.connect(config, purpose: "backfill")

        // The objects must exist and accept 'B' (an older tracking table is upgraded, as `setup`
        // would); the trigger must be in place, or writes during the backfill would be missed.
        do {
            try schema.install(on: db)
        } catch let error as PostgresError where !error.isPermanent {
            failOn(error, name: name)
        } catch {
            CommandSupport.fail("backfill of \(name): setup failed: \(error) (run `setup` with a role that may create the objects, or apply `print-sql`)", status: ExitStatus.config)
        }
        var state: TrackingSchema.BackfillState
        do {
            let locked = try db.execute("SELECT pg_try_advisory_lock($1)", [String(schema.backfillLockKey)])
            if locked[0, 0] != "t" {
                CommandSupport.fail("another backfill of \(name) is running (it holds the table's backfill lock); wait for it or stop it first", status: ExitStatus.transient)
            }
            let keyType = try schema.keyType(db)
            state = try schema.beginBackfill(db, where: whereClause, keyType: keyType, restart: restart)
            if state.keyType != keyType {
                CommandSupport.fail("backfill of \(name): the unfinished run was keyed by type \(state.keyType), the key column is now \(keyType); rerun with --restart", status: ExitStatus.config)
            }
        } catch {
            failOn(error, name: name)
        }
        do {
            try schema.checkBackfillQuery(db, state: state)
        } catch {
            if error.isPermanent {
                CommandSupport.fail("backfill of \(name): --where does not work as a condition on \(name): \(error)", status: ExitStatus.config)
            }
            failOn(error, name: name)
        }
        let remaining: (rows: Int, estimated: Bool)
        do { remaining = try schema.backfillRemaining(db, state: state) } catch { failOn(error, name: name) }

        let filter = whereClause.isEmpty ? "" : " where \(whereClause)"
        if let last = state.lastKey {
            CommandSupport.say("backfill \(name)\(filter): resuming after key \(last), \(state.rowsDone) rows done earlier, \(remaining.estimated ? "about " : "")\(remaining.rows) to go")
        } else {
            CommandSupport.say("backfill \(name)\(filter): \(remaining.estimated ? "about " : "")\(remaining.rows) rows to enqueue, \(pacer.chunkSize(batch: batch)) per chunk\(pacer.rowsPerSecond.map { ", at most \(Int($0)) rows/s" } ?? "")")
        }

        Signals.install([SIGINT, SIGTERM])
        let terminal = isatty(1) == 1
        let started = monotonicSeconds()
        let meter = BackfillMeter(total: state.rowsDone + remaining.rows, totalIsEstimate: remaining.estimated,
                                  doneAtStart: state.rowsDone, startedAt: started)
        var lastPrinted = started
        let chunk = pacer.chunkSize(batch: batch)
        while !state.finished {
            if !Signals.take().intersection([.int, .term]).isEmpty { interrupted(state, meter: meter, name: name, terminal: terminal) }
            do {
                state = try schema.backfillChunk(db, state: state, limit: chunk).state
            } catch {
                if terminal { CommandSupport.say("") }
                failOn(error, name: name)
            }
            let now = monotonicSeconds()
            if terminal {
                if now - lastPrinted >= 0.2 || state.finished {
                    writeAll(fd: 1, Array(("\r\u{1B}[K" + meter.bar(done: state.rowsDone, now: now)).utf8))
                    lastPrinted = now
                }
            } else if now - lastPrinted >= progressInterval {
                CommandSupport.say(meter.line(table: name, done: state.rowsDone, now: now))
                lastPrinted = now
            }
            let wait = pacer.delay(rowsThisRun: state.rowsDone - meter.doneAtStart, elapsed: now - started)
            if wait > 0 && !state.finished { _ = Poll.wait(readable: [Signals.wakeFD], timeout: wait) }
        }
        if terminal { CommandSupport.say("") }
        let elapsed = monotonicSeconds() - started
        let thisRun = state.rowsDone - meter.doneAtStart
        CommandSupport.say("backfill \(name): done, \(state.rowsDone) rows enqueued (\(thisRun) in this run, \(formatFixed(elapsed, decimals: 1)) s, \(elapsed > 0 ? Int(Double(thisRun) / elapsed) : thisRun) rows/s); the service publishes them with \"operation\": \"backfill\"")
    }

    private func interrupted(_ state: TrackingSchema.BackfillState, meter: BackfillMeter, name: String, terminal: Bool) -> Never {
        if terminal { CommandSupport.say("") }
        CommandSupport.say(meter.line(table: name, done: state.rowsDone, now: monotonicSeconds()))
        let resume = "rerun the same command to resume" + (state.lastKey.map { " after key \($0)" } ?? "")
        CommandSupport.fail("backfill of \(name) interrupted after \(state.rowsDone) rows; \(resume)", status: 130)
    }

    private func failOn(_ error: PostgresError, name: String) -> Never {
        if error.isPermanent {
            CommandSupport.fail("backfill of \(name) failed: \(error)", status: ExitStatus.config)
        }
        CommandSupport.fail("backfill of \(name) stopped: \(error); rerun the same command to resume after the last committed chunk", status: ExitStatus.transient)
    }
}
