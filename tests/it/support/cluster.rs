//! A PostgreSQL cluster owned by one test, which it can stop and start again to simulate an
//! outage. Runs the server binaries under /usr/lib/postgresql/*/bin, as user `postgres` when
//! the tests run as root (the server refuses to run as root).

use std::path::PathBuf;
use std::process::Command;

/// A throwaway cluster on a free loopback port; removed when dropped.
pub struct Cluster {
    directory: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    /// Creates and starts a cluster with trust authentication.
    pub fn start() -> Cluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let directory = tempfile::tempdir().expect("cluster directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let cluster = Cluster {
            directory,
            bin,
            port,
        };
        if running_as_root() {
            let status = Command::new("chown")
                .args(["postgres"])
                .arg(cluster.directory.path())
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        cluster.start_again();
        cluster
    }

    /// A started cluster with every migration applied, and a pool on it.
    pub async fn migrated() -> (Cluster, sqlx::PgPool) {
        let cluster = Cluster::start();
        let pool = sqlx::PgPool::connect(&cluster.url())
            .await
            .expect("connect to the cluster");
        token_refresher::storage::migrations::migrate(&pool)
            .await
            .expect("migrate the cluster");
        (cluster, pool)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the (stopped) server.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.directory.path().display()
        );
        let log = self
            .directory
            .path()
            .join("server.log")
            .display()
            .to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server the way a crash would.
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn data(&self) -> String {
        self.directory.path().join("data").display().to_string()
    }

    /// A PostgreSQL binary, run as `postgres` when the tests run as root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .expect("run a PostgreSQL binary");
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}
