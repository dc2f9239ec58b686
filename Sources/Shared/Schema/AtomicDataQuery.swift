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
    public var parameterized: String { trimmed.replacingAll(Self.placeholder, with: "$1") }

    /// The user's text without trailing semicolons and whitespace (it is wrapped in a subquery).
    private var trimmed: String {
        var text = userQuery
        while text.last == ";" || text.last?.isWhitespace == true { text.removeLast() }
        return text
    }

    public var wrapped: String {
        "SELECT coalesce(json_agg(to_json(adp_row)), '[]'::json)::text FROM (\n\(parameterized)\n) AS adp_row"
    }

    /// The same query for a whole batch of keys in one statement: `$1` is an array of keys (of
    /// `keyType`, the type PostgreSQL inferred for `$PRIMARY_KEY` in `wrapped`, as `regtype`
    /// prints it), one row per key: its 1-based position in the array, and its JSON array exactly
    /// as `wrapped` renders it. The key is a correlated column (`adp_key.k`), never spliced text.
    /// No ORDER BY: rows stream out key by key as they are computed, so when one key's query fails
    /// the keys before it are already answered (the reader takes rows one by one).
    ///
    /// One statement instead of one per key: PostgreSQL starts one executor and plans once, and
    /// re-scans the user's query per key (measured with pgbench: 2 to 2.4 times the keys per
    /// second of 100 pipelined single-key statements). Where PostgreSQL refuses a column in the
    /// placeholder's place, preparing this fails and the worker stays key by key. Nil when the
    /// user's text mentions `adp_key` itself: an alias of that name inside the query would
    /// capture the key's reference.
    public func batched(keyType: String) -> String? {
        if trimmed.lowercased().contains("adp_key") { return nil }
        return """
            SELECT adp_key.ord, (SELECT coalesce(json_agg(to_json(adp_row)), '[]'::json)::text FROM (
            \(trimmed.replacingAll(Self.placeholder, with: "adp_key.k"))
            ) AS adp_row)
            FROM unnest($1::\(keyType)[]) WITH ORDINALITY AS adp_key(k, ord)
            """
    }
}
