import Foundation
import Shared
import Synchronization

/// The application writing while a test does something else: on its own thread and connection,
/// `rounds` transactions of `perRound` increments `UPDATE items SET v = v + 1` of random keys in
/// 1...`keys`, pausing `pauseMicroseconds` between rounds. `statement`: another statement taking
/// the key as $1 (the dependency tests insert rows of a dependency table instead).
final class BackgroundWriter: Sendable {
    private let state = Mutex<(done: Bool, error: String?)>((false, nil))

    init(database: DatabaseConfig, name: String, rounds: Int, perRound: Int, keys: Int, pauseMicroseconds: UInt32 = 0,
         statement: String = "UPDATE items SET v = v + 1 WHERE id = $1") {
        let thread = Thread { [self] in
            do {
                let db = try PostgresConnection.connect(ConnectionParameters(database, applicationName: name))
                var generator = SystemRandomNumberGenerator()
                for _ in 0..<rounds {
                    try db.execute("BEGIN")
                    for _ in 0..<perRound { try db.execute(statement, [String(Int.random(in: 1...keys, using: &generator))]) }
                    try db.execute("COMMIT")
                    if pauseMicroseconds > 0 { usleep(pauseMicroseconds) }
                }
                self.state.withLock { $0.done = true }
            } catch {
                self.state.withLock { $0 = (true, "\(error)") }
            }
        }
        thread.start()
    }

    var isDone: Bool { state.withLock { $0.done } }
    /// Why it stopped early, if it did.
    var error: String? { state.withLock { $0.error } }
}
