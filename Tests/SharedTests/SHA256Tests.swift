import XCTest

@testable import Shared

/// SHA-256 against the NIST FIPS 180-4 examples and HMAC-SHA256 against RFC 4231.
final class SHA256Tests: XCTestCase {
    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
    private func sha(_ text: String) -> String { hex(SHA256.hash(Array(text.utf8))) }
    private func hmac(_ key: [UInt8], _ data: [UInt8]) -> String { hex(SHA256.hmac(key: key, message: data)) }

    func testEmpty() { XCTAssertEqual(sha(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") }
    func testABC() { XCTAssertEqual(sha("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") }
    func testTwoBlocks448Bits() {
        XCTAssertEqual(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }
    func test896Bits() {
        XCTAssertEqual(sha("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
                       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
    }
    func testOneMillionA() {
        XCTAssertEqual(hex(SHA256.hash([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000))),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
    func testPaddingBoundaries_55_56_63_64Bytes_differ() {
        let digests = [55, 56, 63, 64, 65].map { sha(String(repeating: "x", count: $0)) }
        XCTAssertEqual(Set(digests).count, 5)
    }

    func testHMAC_RFC4231_case1() { XCTAssertEqual(hmac([UInt8](repeating: 0x0b, count: 20), Array("Hi There".utf8)), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7") }
    func testHMAC_RFC4231_case2() { XCTAssertEqual(hmac(Array("Jefe".utf8), Array("what do ya want for nothing?".utf8)), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843") }
    func testHMAC_RFC4231_case3() { XCTAssertEqual(hmac([UInt8](repeating: 0xaa, count: 20), [UInt8](repeating: 0xdd, count: 50)), "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe") }
    func testHMAC_RFC4231_case4() { XCTAssertEqual(hmac(Array(1...25), [UInt8](repeating: 0xcd, count: 50)), "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b") }
    func testHMAC_RFC4231_case6_keyLongerThanABlock() {
        XCTAssertEqual(hmac([UInt8](repeating: 0xaa, count: 131), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)),
                       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }
    func testHMAC_RFC4231_case7_keyAndDataLongerThanABlock() {
        let data = "This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."
        XCTAssertEqual(hmac([UInt8](repeating: 0xaa, count: 131), Array(data.utf8)), "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2")
    }
}
