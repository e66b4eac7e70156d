//! Man pages and shell completions from the CLI definitions:
//! `cargo run --example gendoc -- OUTDIR` writes OUTDIR/man/*.8 and
//! OUTDIR/completions/{bash,zsh}/*.

use clap::CommandFactory;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let out = std::env::args().nth(1).expect("usage: gendoc OUTDIR");
    let out = Path::new(&out);
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    let cmds = [
        image_policy_agent::daemon::Args::command(),
        image_policy_agent::ctl::Cli::command(),
    ];
    for cmd in cmds {
        let name = cmd.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section("8")
            .render(&mut page)?;
        std::fs::write(man.join(format!("{name}.8")), page)?;
        for (shell, dir, file) in [
            (clap_complete::Shell::Bash, "bash", name.clone()),
            (clap_complete::Shell::Zsh, "zsh", format!("_{name}")),
        ] {
            let d = out.join("completions").join(dir);
            std::fs::create_dir_all(&d)?;
            let mut f = std::fs::File::create(d.join(file))?;
            clap_complete::generate(shell, &mut cmd.clone(), name.clone(), &mut f);
        }
    }
    Ok(())
}
