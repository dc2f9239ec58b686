import XCTest
@testable import Supervisor

final class WorkerEnvironmentTests: XCTestCase {
    func testWorkerEnvironment_dropsConfigurationAndSystemdVariables_keepsTheRest() {
        let env = Supervisor.workerEnvironment([
            "PATH": "/usr/bin", "PGSSLMODE": "require", "LANG": "C.UTF-8",
            "ATOMIC_DATA_PUBLISHER_DATABASE_PASSWORD": "secret", "ATOMIC_DATA_PUBLISHER_INGESTOR_BASE_URL": "http://x",
            "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1",
            "CREDENTIALS_DIRECTORY": "/run/credentials/x", "LISTEN_FDS": "1", "LISTEN_PID": "1",
        ])
        XCTAssertEqual(env, ["GNUTLS_NO_IMPLICIT_INIT=1", "LANG=C.UTF-8", "PATH=/usr/bin", "PGSSLMODE=require"])
    }

    func testWorkerEnvironment_keepsTheOperatorsGnuTLSSetting() {
        XCTAssertEqual(Supervisor.workerEnvironment(["GNUTLS_NO_IMPLICIT_INIT": "0"]), ["GNUTLS_NO_IMPLICIT_INIT=0"])
    }
}
