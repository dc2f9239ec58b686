// Which failures of a PostgreSQL connection attempt are TLS problems a user must fix in the
// configuration (or in the certificates), as opposed to a network or server outage to wait out.
//
// libpq reports these failures only as text: they happen on the client (OpenSSL's verification,
// reading key files), so the server never sends an SQLSTATE for them and libpq has no error code.
// The texts matched here are libpq 12-17's own (fe-secure-openssl.c, fe-connect.c) and OpenSSL's
// verification and alert strings; our processes never call setlocale(), so libpq's messages are
// not translated. A TLS error that is not listed (a reset during the handshake, "SSL SYSCALL
// error") stays an ordinary, retried connection failure.

struct PostgresTLSFailure: Equatable {
    enum Cause: Equatable {
        /// The server's certificate chain is not signed by a CA in sslrootcert (or has expired).
        case untrustedCertificate
        /// The certificate is fine but issued for another host name (verify-full).
        case hostNameMismatch
        /// sslrootcert, sslcert or sslkey cannot be used (missing, unreadable, wrong permissions).
        case unusableFile
        /// The server does not accept TLS and sslmode requires it.
        case notSupportedByServer
        /// The server refused our client certificate during the handshake.
        case clientCertificateRefused
    }

    let cause: Cause

    init?(libpqMessage message: String) {
        let text = message.lowercased()
        func has(_ fragment: String) -> Bool { text.containsScalars(fragment) }
        if has("does not match host name") || has("could not get server's host name from server certificate")
            || has("server certificate for") {
            cause = .hostNameMismatch
        } else if has("certificate verify failed") || has("certificate has expired") || has("self-signed certificate")
            || has("self signed certificate") || has("unable to get local issuer certificate") {
            cause = .untrustedCertificate
        } else if has("root certificate file") || has("could not read certificate file") || has("could not open certificate file")
            || has("could not load private key file") || has("certificate present, but not private key file")
            || has("has group or world access") || has("could not access private key file") || has("could not load ssl certificate revocation list")
            || has("could not read root certificate") {
            cause = .unusableFile
        } else if has("server does not support ssl, but ssl was required") {
            cause = .notSupportedByServer
        } else if has("alert unknown ca") || has("alert bad certificate") || has("alert certificate required")
            || has("alert certificate unknown") || has("alert certificate expired") {
            cause = .clientCertificateRefused
        } else {
            return nil
        }
    }

    /// One sentence: what is wrong, which setting to look at, then libpq's own words.
    func sentence(target: String, parameters: ConnectionParameters, detail: String) -> String {
        let mode = "database.sslmode = \(parameters.sslmode)"
        let rootcert = parameters.sslrootcert.isEmpty ? "libpq's default ~/.postgresql/root.crt" : "database.sslrootcert (\(parameters.sslrootcert))"
        switch cause {
        case .untrustedCertificate:
            return "TLS verification failed: the certificate of PostgreSQL at \(target) is not signed by a CA in \(rootcert) (\(mode)); libpq said: \(detail)"
        case .hostNameMismatch:
            return "TLS verification failed: the certificate of PostgreSQL at \(target) is not issued for the host name in database.host (\(mode)); libpq said: \(detail)"
        case .unusableFile:
            return "TLS setup failed: a certificate or key file of [database] (sslrootcert, sslcert, sslkey) cannot be used; libpq said: \(detail)"
        case .notSupportedByServer:
            return "TLS refused: PostgreSQL at \(target) does not accept TLS connections but \(mode) requires it; libpq said: \(detail)"
        case .clientCertificateRefused:
            return "TLS handshake failed: PostgreSQL at \(target) refused the client certificate in database.sslcert; libpq said: \(detail)"
        }
    }
}
