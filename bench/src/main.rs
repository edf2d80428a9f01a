mod capacity;
fn main() -> anyhow::Result<()> {
    for cap in [1024u32, 65536, 262_144] {
        let (bare, sized) = capacity::measure(cap)?;
        println!("{bare:?}\n{sized:?}");
    }
    Ok(())
}
