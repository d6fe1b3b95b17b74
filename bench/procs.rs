//! The processes under test: spawning weir, the emulator and the limit on loopback ports,
//! waiting for them, reading their memory from /proc, and stopping them.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free loopback address (the port is released again; the child binds it right after).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// A process under test; killed when dropped.
pub struct Proc {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    pub started: Instant,
    /// Time from the spawn to the first expected answer (set by [`Proc::wait_for`]).
    pub ready_after: Duration,
    /// A server this one needs (weir's nats-server), stopped after it.
    pub companion: Option<Box<Proc>>,
}

impl Proc {
    /// Starts `program args…`, logging to `<dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        addr: SocketAddr,
        dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let started = Instant::now();
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            addr,
            child,
            log,
            started,
            ready_after: Duration::ZERO,
            companion: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `GET path` answers `want`; returns the time since the spawn.
    /// Waits until the process accepts TCP connections (a server that speaks no HTTP).
    pub fn wait_for_port(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.addr).is_err() {
            if let Some(exit) = self.child.try_wait()? {
                bail!("{} exited ({exit}):\n{}", self.name, self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen within 30 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    pub fn wait_for(&mut self, path: &str, want: u16) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(status) = get_status(self.addr, path) {
                if status == want {
                    self.ready_after = self.started.elapsed();
                    return Ok(self.ready_after);
                }
                bail!("{}: GET {path} answered {status}, not {want}", self.name);
            }
            if let Some(exit) = self.child.try_wait()? {
                bail!(
                    "{} exited ({exit}) before it answered:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer within 30 s:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// VmRSS and VmHWM, in bytes.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .context("reading /proc/<pid>/status")?;
        let field = |key: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(key))
                .with_context(|| format!("no {key} in /proc/<pid>/status"))?;
            let kb: u64 = line[key.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("reading {line:?}"))?;
            Ok(kb * 1024)
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            peak: field("VmHWM:")?,
        })
    }

    /// CPU time the process has used so far (user and system), from /proc/<pid>/stat.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .context("reading /proc/<pid>/stat")?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("reading /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks: u64 = fields
            .get(11..13)
            .context("short /proc/<pid>/stat")?
            .iter()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .sum();
        Ok(Duration::from_secs_f64(
            ticks as f64 / clock_ticks()? as f64,
        ))
    }

    /// Resets VmHWM to the current RSS, so the next peak belongs to what happens next.
    pub fn reset_peak(&self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .context("resetting the peak RSS (/proc/<pid>/clear_refs)")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails when the process has died (a crash under load must not pass unnoticed).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(exit) = self.child.try_wait()? {
            bail!("{} died ({exit}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

/// One HTTP/1.1 GET on a fresh connection; the response's status code.
pub fn get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    std::str::from_utf8(&buf[..got])
        .ok()
        .and_then(|t| t.get(9..12))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), the unit of /proc/<pid>/stat.
fn clock_ticks() -> anyhow::Result<u64> {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    if let Some(t) = TICKS.get() {
        return Ok(*t);
    }
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let ticks: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("reading getconf CLK_TCK")?;
    Ok(*TICKS.get_or_init(|| ticks.max(1)))
}
