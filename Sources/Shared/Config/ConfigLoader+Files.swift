// Reading config files and secret files with plain POSIX calls, so a failure can say exactly
// why ("Permission denied", "Is a directory") and "does not exist" can be told apart from the
// rest: a missing config/local.toml is normal, an unreadable one is an error.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct FileReadError: Error {
    var errorNumber: Int32
    var reason: String

    var isNotFound: Bool { errorNumber == ENOENT }
}

extension ConfigLoader {
    /// Config and secret files are small; the cap keeps a mistaken `/dev/zero` from eating memory.
    static let maximumFileSize = 16 << 20

    /// The whole file as UTF-8 text.
    static func readTextFile(_ path: String) -> Result<String, FileReadError> {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            return .failure(posixError("open() failed"))
        }
        defer { close(fd) }

        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(posixError("read() failed"))
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > maximumFileSize {
                return .failure(FileReadError(errorNumber: EFBIG, reason: "the file is larger than \(maximumFileSize >> 20) MiB"))
            }
        }

        let text = String(decoding: bytes, as: UTF8.self)
        guard text.utf8.elementsEqual(bytes) else {
            return .failure(FileReadError(errorNumber: EILSEQ, reason: "the file is not valid UTF-8"))
        }
        return .success(text)
    }

    private static func posixError(_ call: String) -> FileReadError {
        let code = errno
        return FileReadError(errorNumber: code, reason: "\(call): \(String(cString: strerror(code)))")
    }

    /// A secret file's content without its trailing line break(s): `echo secret > file` and
    /// `systemd-creds` both leave one.
    static func strippingTrailingNewlines(_ text: String) -> String {
        var text = text
        while let last = text.last, last == "\n" || last == "\r\n" || last == "\r" {
            text.removeLast()
        }
        return text
    }
}
