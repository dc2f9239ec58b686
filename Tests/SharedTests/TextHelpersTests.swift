// The FoundationEssentials stand-ins (Sources/Shared/Text/TextHelpers.swift) against the full
// Foundation methods they replace: the tests may link Foundation, the binaries do not.

import Foundation
import Logging
import XCTest
@testable import Shared

final class TextHelpersTests: XCTestCase {
    private let samples = [
        "", " ", "\t a b \t", "  hotspots\n", "\n\r\u{2028} x \u{85}\u{A0}", "\u{3000}wide\u{2003}", "a\"b\"\"c", "'it''s'",
        "no blanks", "é\u{301} ", "\"\u{301}quoted", "$PRIMARY_KEY = $PRIMARY_KEY", "EXECUTE PROCEDURE public.f()",
    ]

    func testTrimming_matchesFoundation() {
        for s in samples {
            XCTAssertEqual(s.trimmingWhitespace(), s.trimmingCharacters(in: .whitespaces), "\(s.debugDescription)")
            XCTAssertEqual(s.trimmingWhitespaceAndNewlines(), s.trimmingCharacters(in: .whitespacesAndNewlines), "\(s.debugDescription)")
            XCTAssertEqual(Substring(s).trimmingWhitespace(), s.trimmingCharacters(in: .whitespaces))
        }
    }

    func testReplacingAll_matchesFoundationOnOrdinaryText() {
        let pairs = [("\"", "\"\""), ("'", "''"), (";", ""), ("$PRIMARY_KEY", "$1"), ("EXECUTE PROCEDURE", "EXECUTE FUNCTION"),
                     ("public.", ""), ("\\", "\\\\"), ("\n", "\\n"), ("aa", "a")]
        for s in samples + ["aaaa", "a;b;", ";;"] where !s.unicodeScalars.contains(where: { $0.value == 0x301 }) {
            for (target, replacement) in pairs {
                XCTAssertEqual(s.replacingAll(target, with: replacement), s.replacingOccurrences(of: target, with: replacement),
                               "\(s.debugDescription) \(target) -> \(replacement)")
            }
        }
    }

    func testRangeOfScalars_matchesFoundationOnOrdinaryText() {
        for s in samples + ["a://b", "x:  y:  z", "$adp$ body $adp$", " rows=12", "aab", "ab"] {
            for target in ["://", ":  ", "$adp$", " rows=", "ab", "\"", "x", "PRIMARY"] where !s.unicodeScalars.contains(where: { $0.value == 0x301 }) {
                XCTAssertEqual(s.rangeOfScalars(target), s.range(of: target), "\(s.debugDescription) \(target)")
            }
        }
        let text = "one $adp$ two $adp$ three"
        let start = text.rangeOfScalars("$adp$")!
        XCTAssertEqual(text[start.upperBound...].rangeOfScalars("$adp$")?.lowerBound, text.range(of: "$adp$", range: start.upperBound..<text.endIndex)?.lowerBound)
    }

    func testReplacingAll_doublesAQuoteEvenBeforeACombiningMark() {
        // A grapheme-cluster comparison would see `"́` as one character and miss the quote.
        XCTAssertEqual("a\"\u{301}b".replacingAll("\"", with: "\"\""), "a\"\"\u{301}b")
        XCTAssertEqual(quoteIdentifier("x\"\u{301}"), "\"x\"\"\u{301}\"")
    }

    func testPathComponents_matchNSString() {
        for path in ["", "/", "a", "/a", "a/b.swift", "Shared/Logging/JSONLogHandler.swift", "/usr/bin/atomic-data-publisher",
                     "a/b/", "/a//b", "./x", "a//"] {
            XCTAssertEqual(path.lastPathComponent, (path as NSString).lastPathComponent, "lastPathComponent of \(path.debugDescription)")
        }
        // NSString's deletingLastPathComponent traps on some inputs here: compare the kind of
        // path it is used on (the executable's absolute path, CommandSupport).
        for path in ["/usr/bin/atomic-data-publisher", "/a/b", "/work/wt/.build/debug/atomic-data-publisher"] {
            XCTAssertEqual(path.deletingLastPathComponent, (path as NSString).deletingLastPathComponent,
                           "deletingLastPathComponent of \(path.debugDescription)")
        }
    }

    func testNumberFormatting_matchesStringFormat() {
        for value in [0.0, 0.04, 0.05, 0.5, 1.25, 2.675, 12.3456, 99.95, 100, 1234567.891, -0.3, -2.5] {
            XCTAssertEqual(formatFixed(value, decimals: 1), String(format: "%.1f", value))
            XCTAssertEqual(formatFixed(value, decimals: 2), String(format: "%.2f", value))
        }
        for value in [0, 5, 9, 10, 59, 123, -5] {
            XCTAssertEqual(zeroPadded(value, width: 2), String(format: "%02d", value))
        }
        for value: UInt32 in [0, 1, 0x1f, 0x7f, 0xabc, 0x12345] {
            XCTAssertEqual(hexPadded(value, width: 4), String(format: "%04x", value))
        }
    }

    func testJSONString_escapesControlCharactersAsBefore() {
        XCTAssertEqual(jsonString("a\u{1}b\u{1f}\"\\\n"), "\"a\\u0001b\\u001f\\\"\\\\\\n\"")
    }

    func testRedactor_keepsTheTemplateGroups() {
        XCTAssertEqual(Redactor.redact("connect postgres://u:hunter2@db:5432/x failed"), "connect postgres://u:<redacted>@db:5432/x failed")
        XCTAssertEqual(Redactor.redact("PASSWORD = 'a b' and Token: abc Bearer xyz"), "PASSWORD = <redacted> and Token: <redacted> Bearer <redacted>")
        XCTAssertEqual(Redactor.redact("password=\"x y\" rest"), "password=<redacted> rest")
        XCTAssertEqual(Redactor.redact("nothing secret here"), "nothing secret here")
    }

    /// The NSRegularExpression implementation Redactor had before it moved to Swift Regex.
    private func foundationRedact(_ text: String) -> String {
        guard text.contains("password") || text.contains("@") || text.contains("Bearer") || text.contains("token") else { return text }
        var out = text
        for pattern in [#"(password\s*[=:]\s*)("[^"]*"|'[^']*'|\S+)"#, #"(Bearer\s+)\S+"#, #"(token\s*[=:]\s*)\S+"#, #"(://[^:/@\s]+:)[^@/\s]+(@)"#] {
            let regex = try! NSRegularExpression(pattern: pattern, options: [.caseInsensitive])
            let template = pattern.hasSuffix("(@)") ? "$1<redacted>$2" : "$1<redacted>"
            out = regex.stringByReplacingMatches(in: out, range: NSRange(out.startIndex..., in: out), withTemplate: template)
        }
        return out
    }

    func testRedactor_matchesTheNSRegularExpressionVersion() {
        let texts = [
            "password=hunter2 host=x", "Authorization: Bearer abc.def", "http://user:s3cret@host/x", "nothing secret here",
            "PassWord : 'multi word' x", "password=\"q q\" password='' token=", "TOKEN=abc\ttoken: d\u{A0}e", "a@b c@d",
            "https://u:p@h:1/p and postgresql://x:y@z/db", "password=é\u{301}x rest", "bearer\n\tsecret", "tokens=1", "user@host:pw",
            "password= \u{3000}spaced", "ftp://a:b:c@d/", "password=héllo wörld token=😀x",
            "password=\u{0B}x\u{85}y", "token:\u{2029}z", "Bearer\u{0C}abc", "password=\"unclosed rest", "password='",
            "password:", "password = ", "x://:p@h", "http://u:@h", "http://u:p/q@h", "http://u@h:p@x", "a://b:c d@e",
            "PASSWORD=1 password=2 passwordpassword=3", "tokentoken=x", "BEARER x Bearer\ny", "://a:b@://c:d@",
            "password=\"a\"b\" c", "TOKEN = 'q r'", "password\t=\t\"x\"",
        ]
        for text in texts {
            XCTAssertEqual(Redactor.redact(text), foundationRedact(text), text.debugDescription)
        }
    }
}
