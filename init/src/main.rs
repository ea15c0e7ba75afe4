fn main() {
    println!("cairn-init {}", env!("CARGO_PKG_VERSION"));
}
