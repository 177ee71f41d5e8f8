//! The multi-lane MD5 batcher (`md5lanes::Kernel::update_batch_with`) against md-5, for
//! every kernel and single-stream engine this CPU has: the input picks the kernel, the
//! engine, how many streams (1..=40), each stream's length and bytes, when it joins the
//! batches and the ragged size of every piece it feeds; every stream's digest must equal
//! md-5's of the same message, and a digest taken mid-stream must equal md-5's of the
//! prefix fed so far.
#![no_main]

use keepring::md5lanes::{Kernel, LaneState, SingleStream};
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};

/// A stream under test: its whole message, how much was fed, when it joins.
struct Stream {
    message: Vec<u8>,
    fed: usize,
    joins_at_round: usize,
    state: LaneState,
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let kernels: Vec<Kernel> = Kernel::ALL.into_iter().filter(|kernel| kernel.is_available()).collect();
    let kernel = kernels[data[0] as usize % kernels.len()];
    let engines = SingleStream::available();
    let engine = engines[data[1] as usize % engines.len()];
    let control = &data[3..];
    let byte = |index: usize| control.get(index % control.len().max(1)).copied().unwrap_or(0) as usize;
    let mut streams: Vec<Stream> = (0..1 + data[2] as usize % 40)
        .map(|index| {
            // Mostly short and ragged around block edges; now and then 16 times longer.
            let scale = if byte(index * 5 + 1) % 16 == 0 { 16 } else { 1 };
            let length = (byte(index * 5) * 7 + index * 13) % 1200 * scale;
            let seed = byte(index * 5 + 2);
            Stream {
                message: (0..length).map(|at| (at * 31 + seed * 7 + index) as u8).collect(),
                fed: 0,
                joins_at_round: byte(index * 5 + 3) % 4,
                state: LaneState::new(),
            }
        })
        .collect();
    let mut round = 0;
    // Every round feeds each joined stream at least one byte, so this ends.
    while streams.iter().any(|stream| stream.fed < stream.message.len()) {
        let mut jobs: Vec<(&mut LaneState, &[u8])> = Vec::new();
        for (index, stream) in streams.iter_mut().enumerate() {
            if round < stream.joins_at_round || stream.fed == stream.message.len() {
                continue;
            }
            // Ragged: 1 to 700 bytes, mostly tens or hundreds.
            let piece = 1 + (byte(round * 3 + index) * 17 + byte(index) + round) % 700;
            let end = (stream.fed + piece).min(stream.message.len());
            jobs.push((&mut stream.state, &stream.message[stream.fed..end]));
            stream.fed = end;
        }
        kernel.update_batch_with(engine, &mut jobs);
        drop(jobs);
        if round % 7 == 3 && round < 50 {
            for stream in &streams {
                let prefix = Md5::digest(&stream.message[..stream.fed]);
                assert_eq!(stream.state.finish_with(engine)[..], prefix[..], "mid-stream, {}", kernel.name());
            }
        }
        round += 1;
    }
    for stream in &streams {
        assert_eq!(stream.state.length_bytes(), stream.message.len() as u64);
        let expected = Md5::digest(&stream.message);
        assert_eq!(
            stream.state.finish_with(engine)[..],
            expected[..],
            "{} with {}: {} bytes",
            kernel.name(),
            engine.name(),
            stream.message.len()
        );
    }
});
