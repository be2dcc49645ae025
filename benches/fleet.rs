//! The fleet-scale load generator of `benches/fleet.sh`: N simulated agents long-poll one
//! real `berth serve` on loopback, each on its own connection, as `berth agent` does
//! (`GET /api/v1/hosts/<host>/manifest?timeout=60&after=<n>`, again as soon as it answers).
//!
//! `cargo bench --bench fleet -- --url URL --token ADMIN --pid PID --database DB --system PATH
//!  [--agents 10000] [--idle-secs 20]` (harness = false). It seeds generation 1 of hosts
//! `h00000…` into the server's database (`--database`, as builds would have made them; the
//! system `--system` must be in the cache), opens the agents' long-polls, and prints one
//! `name value` line per figure:
//! - `idle_cpu_percent`, `idle_queries_per_sec`, `rss_mib` (server, while every agent waits);
//! - `rollout_secs`: one redeploy per host through the admin API (16 at a time), from the
//!   first request to the last agent's manifest; `delivery_p50_ms`, `delivery_p99_ms`,
//!   `delivery_max_ms`: each host's manifest after its redeploy answered;
//! - `single_ms`: one more generation of one host, until its agent has it (median of 5);
//! - `hosts_api_ms`: `GET /api/v1/hosts` with every host (median of 3), `hosts_api_queries`.
//!
//! The agents run on this process's runtime (it raises its open-files limit, one socket per
//! agent), so on a small machine they share the cores with the server: the figures include
//! that.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// Command-line settings.
struct Args {
    url: String,
    token: String,
    pid: u32,
    database: String,
    system: String,
    agents: usize,
    idle_secs: u64,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let (mut url, mut token, mut pid, mut database, mut system) = (None, None, None, None, None);
    let (mut agents, mut idle_secs) = (10_000, 20);
    while let Some(flag) = a.next() {
        let mut value = || a.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()),
            "--token" => token = Some(value()),
            "--pid" => pid = Some(value().parse().expect("--pid")),
            "--database" => database = Some(value()),
            "--system" => system = Some(value()),
            "--agents" => agents = value().parse().expect("--agents"),
            "--idle-secs" => idle_secs = value().parse().expect("--idle-secs"),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let need = |v: Option<String>, name: &str| v.unwrap_or_else(|| panic!("--{name} is required"));
    Args {
        url: need(url, "url"),
        token: need(token, "token"),
        pid: pid.expect("--pid is required"),
        database: need(database, "database"),
        system: need(system, "system"),
        agents,
        idle_secs,
    }
}

fn host(i: usize) -> String {
    format!("h{i:05}")
}

/// What each agent saw: manifests received and when the last one came (µs since `epoch`).
struct Seen {
    epoch: Instant,
    manifests: Vec<AtomicU64>,
    last_at: Vec<AtomicU64>,
    errors: AtomicU64,
}

impl Seen {
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// One HTTP/1.1 response on a kept-alive connection: its status (the body is read and dropped).
async fn response(reader: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| std::io::ErrorKind::InvalidData)?;
        }
        chunked |= header == "transfer-encoding: chunked";
    }
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| std::io::ErrorKind::InvalidData)?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
    }
    Ok(status)
}

/// One agent: long-polls host `i` for ever, reconnecting after errors.
async fn agent(addr: String, token: Arc<str>, i: usize, seen: Arc<Seen>) {
    let mut after = 1;
    loop {
        let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr)).await else {
            seen.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut reader = BufReader::with_capacity(1024, stream);
        loop {
            let request = format!(
                "GET /api/v1/hosts/{}/manifest?timeout=60&after={after} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\nx-berth-manifest-version: 2\r\n\r\n",
                host(i)
            );
            if reader.get_mut().write_all(request.as_bytes()).await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(90), response(&mut reader)).await {
                Ok(Ok(200)) => {
                    after += 1;
                    seen.last_at[i].store(seen.micros(), Ordering::Relaxed);
                    seen.manifests[i].fetch_add(1, Ordering::Release);
                }
                Ok(Ok(204)) => {}
                _ => {
                    seen.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server's /proc/PID/stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
    // Fields 14 and 15 of the whole line, utime and stime, in clock ticks (100 a second on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// `VmRSS` of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kib / 1024.0
}

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> u64 {
    let text = http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).unwrap_or_else(|| panic!("{name}"));
    value.trim().parse().unwrap()
}

/// Generation 1 of every host, as builds would have made it.
async fn seed(database: &str, system: &str, agents: usize) {
    let db = berth::db::Db::open(database).await.expect("the server's database");
    let started = Instant::now();
    let hosts: Vec<String> = (0..agents).map(host).collect();
    let existing = db.newest_generations(&hosts).await.unwrap().len();
    futures::future::join_all((0..8).map(|worker| {
        let (db, hosts) = (db.clone(), &hosts);
        async move {
            for host in hosts.iter().skip(existing).skip(worker).step_by(8) {
                let g = berth::db::NewGeneration {
                    host,
                    repository: "fleet",
                    store_path: system,
                    commit_sha: "c0ffee",
                    branch: "main",
                    build_id: None,
                    signer: None,
                    rollout_id: None,
                    held: false,
                    diff_from: None,
                    diff: None,
                };
                db.add_generation(&g).await.unwrap();
            }
        }
    }))
    .await;
    eprintln!("seeded {} hosts in {:.1} s", agents - existing, started.elapsed().as_secs_f64());
    db.close().await;
}

async fn redeploy(http: &reqwest::Client, a: &Args, i: usize) {
    let url = format!("{}/api/v1/hosts/{}/redeploy", a.url, host(i));
    let r = http.post(url).bearer_auth(&a.token).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

/// Waits until every agent has `count` manifests (at most `limit`).
async fn all_have(seen: &Seen, count: u64, limit: Duration) -> bool {
    let start = Instant::now();
    while seen.manifests.iter().any(|m| m.load(Ordering::Acquire) < count) {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn rollout(http: &reqwest::Client, a: &Args, seen: &Arc<Seen>) {
    let answered: Arc<Vec<AtomicU64>> = Arc::new((0..a.agents).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let workers = (0..16).map(|_| {
        let (next, answered, seen) = (next.clone(), answered.clone(), seen.clone());
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= a.agents {
                    return;
                }
                redeploy(http, a, i).await;
                answered[i].store(seen.micros(), Ordering::Relaxed);
            }
        }
    });
    futures::future::join_all(workers).await;
    let reached = all_have(seen, 1, Duration::from_secs(300)).await;
    assert!(reached, "not every agent got its manifest within 300 s");
    let all = started.elapsed();
    let mut delivery: Vec<f64> = (0..a.agents)
        .map(|i| {
            seen.last_at[i].load(Ordering::Relaxed).saturating_sub(answered[i].load(Ordering::Relaxed)) as f64 / 1e3
        })
        .collect();
    delivery.sort_by(f64::total_cmp);
    println!("rollout_secs {:.2}", all.as_secs_f64());
    println!("delivery_p50_ms {:.1}", percentile(&delivery, 0.5));
    println!("delivery_p99_ms {:.1}", percentile(&delivery, 0.99));
    println!("delivery_max_ms {:.1}", percentile(&delivery, 1.0));
}

#[tokio::main]
async fn main() {
    let a = args();
    rlimit::increase_nofile_limit(u64::MAX).expect("raising the open-files limit");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    seed(&a.database, &a.system, a.agents).await;
    let seen = Arc::new(Seen {
        epoch: Instant::now(),
        manifests: (0..a.agents).map(|_| AtomicU64::new(0)).collect(),
        last_at: (0..a.agents).map(|_| AtomicU64::new(0)).collect(),
        errors: AtomicU64::new(0),
    });
    let addr = a.url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let token: Arc<str> = a.token.clone().into();
    let opened = Instant::now();
    for i in 0..a.agents {
        tokio::spawn(agent(addr.clone(), token.clone(), i, seen.clone()));
        if i % 200 == 199 {
            // Connections opened in steps, as a fleet's agents would not all start in one ms.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    while metric(&http, &a.url, "berth_manifest_polls_waiting").await < a.agents as u64 {
        assert!(opened.elapsed() < Duration::from_secs(300), "the agents' long-polls did not all open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("agents {}", a.agents);
    println!("open_secs {:.2}", opened.elapsed().as_secs_f64());
    // Settle, then measure a quiet stretch.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, q0, t0) = (cpu_secs(a.pid), metric(&http, &a.url, "berth_db_queries_total").await, Instant::now());
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let (cpu1, q1, t1) = (cpu_secs(a.pid), metric(&http, &a.url, "berth_db_queries_total").await, Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    println!("idle_cpu_percent {:.2}", (cpu1 - cpu0) / secs * 100.0);
    println!("idle_queries_per_sec {:.1}", (q1 - q0) as f64 / secs);
    println!("rss_mib {:.1}", rss_mib(a.pid));

    rollout(&http, &a, &seen).await;
    let mut single = Vec::new();
    for n in 2..=6 {
        let sent = seen.micros();
        redeploy(&http, &a, 0).await;
        while seen.manifests[0].load(Ordering::Acquire) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        single.push((seen.last_at[0].load(Ordering::Relaxed) - sent) as f64 / 1e3);
    }
    single.sort_by(f64::total_cmp);
    println!("single_ms {:.1}", percentile(&single, 0.5));
    println!("rss_after_mib {:.1}", rss_mib(a.pid));

    let mut list = Vec::new();
    let q0 = metric(&http, &a.url, "berth_db_queries_total").await;
    for _ in 0..3 {
        let t = Instant::now();
        let r = http.get(format!("{}/api/v1/hosts", a.url)).bearer_auth(&a.token).send().await.unwrap();
        let hosts: Vec<serde_json::Value> = r.json().await.unwrap();
        assert!(hosts.len() >= a.agents);
        list.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let q1 = metric(&http, &a.url, "berth_db_queries_total").await;
    list.sort_by(f64::total_cmp);
    println!("hosts_api_ms {:.0}", percentile(&list, 0.5));
    println!("hosts_api_queries {}", (q1 - q0) / 3);
    println!("agent_errors {}", seen.errors.load(Ordering::Relaxed));
    std::process::exit(0);
}
