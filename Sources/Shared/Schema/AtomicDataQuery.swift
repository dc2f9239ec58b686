#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

// The user's atomic data query, made safe and typed:
// - `$PRIMARY_KEY` becomes the bound parameter `$1` (never spliced into the text), so a key such
//   as `x'); DROP TABLE hotspots; --` is just a value. Its type is left for PostgreSQL to infer
//   from the comparison (integer, text, uuid, ...).
// - The query is wrapped so that PostgreSQL renders its rows as one JSON array (`to_json` of each
//   row keeps column order; every column type maps the way PostgreSQL maps it).

public struct AtomicDataQuery: Sendable, Equatable {
    public static let placeholder = "$PRIMARY_KEY"
    public let userQuery: String

    public init(_ userQuery: String) { self.userQuery = userQuery }

    /// The query with the placeholder replaced by `$1`. A placeholder inside a string literal or a
    /// comment is replaced too: the query is the operator's own text, not user input.
    public var parameterized: String {
        var text = userQuery
        while text.last == ";" || text.last?.isWhitespace == true { text.removeLast() }
        return text.replacingAll(Self.placeholder, with: "$1")
    }

    public var wrapped: String {
        "SELECT coalesce(json_agg(to_json(adp_row)), '[]'::json)::text FROM (\n\(parameterized)\n) AS adp_row"
    }
}
