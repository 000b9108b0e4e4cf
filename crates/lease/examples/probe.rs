//! Manual check against a running daemon: `probe LOCKSPACE LEASE_FILE [HOST_ID]`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let s = lease::Sanlock::connect(&args[1])?;
    println!("host id {}", s.host_id());
    let held = s.acquire(args[2].as_ref(), None)?;
    println!("acquired {:?}", s.read(args[2].as_ref())?);
    if let Some(h) = args.get(3) {
        println!("host {h}: {:?}", s.host_status(h.parse()?)?);
    }
    std::thread::sleep(std::time::Duration::from_secs(
        std::env::var("HOLD")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    ));
    drop(held);
    Ok(())
}
