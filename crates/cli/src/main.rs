//! The `imgtx` command: ACID transactions for VM disk images.

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--help") {
        println!("imgtx: ACID transactions for VM disk images");
    }
}
