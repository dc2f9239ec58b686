import XCTest

@testable import Shared

/// The array literals the worker binds as one parameter (keys as text[], tracking ids as
/// bigint[]); PrimaryKeyTests and CoalescingTests send them to PostgreSQL.
final class ArrayLiteralTests: XCTestCase {
    func testTextArray_quotesEveryElementAndEscapesOnlyBackslashAndQuote() {
        XCTAssertEqual(TrackingSchema.textArray([]), "{}")
        XCTAssertEqual(TrackingSchema.textArray([""]), "{\"\"}")
        XCTAssertEqual(TrackingSchema.textArray(["1", "NULL", "a,b", "{x}"]), "{\"1\",\"NULL\",\"a,b\",\"{x}\"}")
        XCTAssertEqual(TrackingSchema.textArray(["say \"hi\"", "C:\\dir\\"]), "{\"say \\\"hi\\\"\",\"C:\\\\dir\\\\\"}")
        // Multi-byte keys pass through byte for byte.
        XCTAssertEqual(TrackingSchema.textArray(["clé", "🔑 key"]), "{\"clé\",\"🔑 key\"}")
    }

    func testIdArray_isPlainIntegers() {
        XCTAssertEqual(TrackingSchema.array([]), "{}")
        XCTAssertEqual(TrackingSchema.array([1, -2, Int64.max]), "{1,-2,9223372036854775807}")
    }
}
