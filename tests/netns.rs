//! Two hosts made of network namespaces joined by a veth pair, two ranks in each: TCP
//! crosses the "hosts" over real addresses of their own, shared memory stays inside each.
//! The test creates and removes its namespaces itself, and reports itself skipped (by
//! name, with the reason) where namespaces cannot be made (not root, no `ip`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "OXCCL_NETNS_CHILD";

/// The rank's side, run inside a namespace by [`two_hosts_over_veth`].
#[test]
fn netns_child() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    use oxccl::{Comm, ReduceOp};
    let mut c = Comm::from_env().unwrap_or_else(|e| {
        eprintln!("INIT-ERROR: {e}");
        std::process::exit(3)
    });
    let (me, n) = (c.rank(), c.size());
    for count in [1usize, 1000, 300_000] {
        let send: Vec<f32> = (0..count).map(|i| ((i % 97) * (me + 1)) as f32).collect();
        let mut recv = vec![0f32; count];
        c.all_reduce(&send, &mut recv, ReduceOp::Sum).unwrap();
        let tri = (n * (n + 1) / 2) as f32;
        assert!(recv.iter().enumerate().all(|(i, &x)| x == (i % 97) as f32 * tri), "all_reduce of {count}");
        let mut all = vec![0f32; count * n];
        c.all_gather(&send, &mut all).unwrap();
        for r in 0..n {
            assert!(all[r * count..(r + 1) * count].iter().enumerate().all(|(i, &x)| x == ((i % 97) * (r + 1)) as f32));
        }
    }
    c.barrier().unwrap();
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The namespaces and veth pair of one test run; removed on drop.
struct Hosts {
    ns: [String; 2],
}

impl Hosts {
    fn create(tag: u32) -> Result<Hosts, String> {
        let ns = [format!("oxccl-a{tag}"), format!("oxccl-b{tag}")];
        let h = Hosts { ns: ns.clone() };
        let (va, vb) = (format!("oxa{tag}"), format!("oxb{tag}"));
        let net = format!("10.{}.{}", 100 + tag % 100, tag / 100 % 250);
        sh(&["ip", "netns", "add", &ns[0]])?;
        sh(&["ip", "netns", "add", &ns[1]])?;
        sh(&["ip", "link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        sh(&["ip", "link", "set", &va, "netns", &ns[0]])?;
        sh(&["ip", "link", "set", &vb, "netns", &ns[1]])?;
        for (i, (n, v)) in [(&ns[0], &va), (&ns[1], &vb)].into_iter().enumerate() {
            sh(&["ip", "-n", n, "addr", "add", &format!("{net}.{}/24", i + 1), "dev", v])?;
            sh(&["ip", "-n", n, "link", "set", v, "up"])?;
            sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(h)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = sh(&["ip", "netns", "del", n]); // removes the veth end inside it too
        }
    }
}

#[test]
fn two_hosts_over_veth() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("ip").arg("-V").output().is_err() {
        println!("skipped: two_hosts_over_veth: needs root and iproute2 to create network namespaces");
        return;
    }
    let tag = std::process::id() % 20000;
    let hosts = match Hosts::create(tag) {
        Ok(h) => h,
        Err(e) => {
            println!("skipped: two_hosts_over_veth: cannot create network namespaces ({e})");
            return;
        }
    };
    let net = format!("10.{}.{}", 100 + tag % 100, tag / 100 % 250);
    let root = format!("{net}.1:{}", 20000 + tag % 30000);
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for r in 0..4usize {
        let ns = &hosts.ns[r / 2];
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .args(["--exact", "netns_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("OXCCL_COMM_ID", &root)
            .env("OXCCL_RANK", r.to_string())
            .env("OXCCL_NRANKS", "4")
            .env("OXCCL_TIMEOUT", "60")
            .env("OXCCL_SOCKET_IFNAME", "ox")
            .env("OXCCL_HOSTID", format!("netns-host-{}", r / 2))
            .env("OXCCL_DEBUG", "INFO")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push(child);
    }
    let start = Instant::now();
    let mut done = [None; 4];
    while done.iter().any(|d: &Option<std::process::ExitStatus>| d.is_none()) {
        for (i, c) in children.iter_mut().enumerate() {
            if done[i].is_none() {
                done[i] = c.try_wait().unwrap();
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            for c in children.iter_mut() {
                let _ = c.kill();
            }
            panic!("deadline: ranks still running after 120 s (hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut logs = String::new();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(done[i].unwrap().success(), "rank {i} failed:\n{err}");
        logs += &err;
    }
    // The links the ranks chose: shared memory inside a namespace, TCP across.
    assert!(logs.contains("links from rank 0: shm 1 (1), tcp 2 (2-3)"), "topology:\n{logs}");
    assert!(logs.contains("links from rank 3: shm 1 (2), tcp 2 (0-1)"), "topology:\n{logs}");
    drop(hosts);
}
