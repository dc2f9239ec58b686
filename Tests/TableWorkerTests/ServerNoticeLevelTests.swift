import XCTest
@testable import TableWorker

/// Server messages on the worker's connections: a NOTICE (setup's "already exists, skipping" at
/// every start) is debug, a WARNING stays a warning, anything unrecognised is a notice.
final class ServerNoticeLevelTests: XCTestCase {
    func testANotice_fromIdempotentSetup_isDebug() {
        XCTAssertEqual(DatabaseSession.logLevel(ofServerNotice: "NOTICE:  column \"permanent_failures\" of relation \"hotspots_changes\" already exists, skipping"), .debug)
    }

    func testAWarning_staysAWarning() {
        XCTAssertEqual(DatabaseSession.logLevel(ofServerNotice: "WARNING:  there is no transaction in progress"), .warning)
    }

    func testInfoLogAndDebugSeverities_areDebug() {
        for severity in ["INFO", "LOG", "DEBUG", "DEBUG1"] {
            XCTAssertEqual(DatabaseSession.logLevel(ofServerNotice: "\(severity):  something"), .debug, severity)
        }
    }

    func testAnUnrecognisedMessage_isANotice() {
        XCTAssertEqual(DatabaseSession.logLevel(ofServerNotice: "something without a severity"), .notice)
    }
}
