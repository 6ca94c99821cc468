fn main() { println!("quickstart placeholder"); }
