use super::*;
use crate::replay::{ReplaySource, ReplayTarget};

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) source: ReplaySource,
}

pub(crate) fn run_verify(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    use jetfold_host::replay::Range;
    let loader = loader(cli)?;
    let (target, plugin) = ReplayTarget::open(&args.source, &loader)?;
    let name = plugin.manifest.name.clone();
    let digest = plugin.component.digest.hex();
    // The checkpoint and the states it goes with (as of its last snapshot), read again if a
    // daemon wrote a snapshot between.
    let mut sink = jetfold_host::sink::Sink::open(&target.config.sink_target())?;
    let mut attempts = 0;
    let snapshot = |c: &Option<jetfold_host::sink::Checkpoint>| {
        c.as_ref().map(|c| (c.snapshot_seq, c.state_version))
    };
    // A partitioned daemon's config verifies its partition: its checkpoint, its keys.
    let partition = target.config.partition;
    let checkpoint_name = partition.checkpoint_name(&name);
    let (checkpoint, stored) = loop {
        let before = sink.checkpoint(&checkpoint_name)?;
        let states = sink.states(&name)?;
        if snapshot(&sink.checkpoint(&checkpoint_name)?) == snapshot(&before) {
            break (before, states);
        }
        attempts += 1;
        if attempts == 20 {
            anyhow::bail!(
                "plugin `{name}` committed during each of 20 reads of its states: verify it when its stream is quiet"
            );
        }
    };
    let Some(checkpoint) = checkpoint else {
        if partition.count > 1 {
            anyhow::bail!(
                "plugin `{name}` has no checkpoint `{checkpoint_name}` in the sink: partition {}/{} has not committed yet",
                partition.index,
                partition.count
            );
        }
        anyhow::bail!(
            "plugin `{name}` has no checkpoint in the sink: nothing to verify (for a partitioned daemon, give its config, which names its [partition])"
        );
    };
    // The events the daemon rejected: those this version folds explain differences.
    let rejected: std::collections::HashSet<u64> =
        sink.rejections_between(&name, 0, checkpoint.snapshot_seq)?.into_iter().collect();
    let mut now_folded = Vec::new();
    let mut replayer = target.replayer(plugin, &args.source.plugin, args.source.jobs(), &loader)?;
    let range = Range { to_seq: Some(checkpoint.snapshot_seq), ..Range::default() };
    let mut progress = jetfold_host::progress::ProgressLine::new("verify");
    with_nats(&target.config, async |client| {
        let js = async_nats::jetstream::new(client);
        target
            .read_batches(&js, &range, &name, |seqs, batch, total| {
                for (seq, (_, outcome)) in seqs.iter().zip(replayer.fold(batch)) {
                    if rejected.contains(seq)
                        && outcome.error.is_none()
                        && outcome.passed_by.is_none()
                    {
                        now_folded.push(*seq);
                    }
                }
                progress.update(replayer.events, total);
            })
            .await?;
        anyhow::Ok(())
    })?;
    progress.finish(replayer.events, replayer.events);
    let replayed: std::collections::BTreeMap<String, Vec<u8>> = replayer
        .states()
        .into_iter()
        .filter(|(k, _)| partition.owns(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let stored: std::collections::BTreeMap<String, Vec<u8>> =
        stored.into_iter().filter(|(k, _)| partition.owns(k)).collect();
    let mut keys: Vec<&String> = stored.keys().chain(replayed.keys()).collect();
    keys.sort();
    keys.dedup();
    let doc = |s: Option<&Vec<u8>>| s.map(|b| jetfold_host::fold::state_document(b));
    let differ: Vec<&String> =
        keys.into_iter().filter(|k| stored.get(*k) != replayed.get(*k)).collect();
    println!(
        "{name}: replayed {} events up to sequence {} (states as of that sequence; checkpoint at {} by {}, replayed with {digest})",
        replayer.events, checkpoint.snapshot_seq, checkpoint.last_seq, checkpoint.digest
    );
    if differ.is_empty() {
        let of = match partition.count {
            0 | 1 => String::new(),
            n => format!(" of partition {}/{n}", partition.index),
        };
        println!("verified: all {} states{of} match", stored.len());
        return Ok(ExitCode::SUCCESS);
    }
    if checkpoint.digest != digest {
        println!("the component differs from the version that wrote the checkpoint");
    }
    if !now_folded.is_empty() {
        let shown: Vec<String> = now_folded.iter().take(10).map(u64::to_string).collect();
        println!(
            "{} the daemon rejected fold{} with this version (sequence {}{}): the stored states have them once a replayed copy folds them (`jetfold dlq replay`) and a snapshot is written",
            match now_folded.len() {
                1 => "1 event".to_string(),
                n => format!("{n} events"),
            },
            if now_folded.len() == 1 { "s" } else { "" },
            shown.join(", "),
            if now_folded.len() > 10 { ", …" } else { "" }
        );
    }
    println!("{} of {} states differ:", differ.len(), stored.len().max(replayed.len()));
    for key in differ.iter().take(20) {
        let line = serde_json::json!({"key": key, "stored": doc(stored.get(*key)), "replayed": doc(replayed.get(*key))});
        println!("{line}");
    }
    if differ.len() > 20 {
        println!("… and {} more", differ.len() - 20);
    }
    Ok(ExitCode::from(EXIT_CHECK_FAILED))
}
