//! Differential tests: every kernel the CPU has, with every single-stream engine, against
//! md-5's and OpenSSL's one-shot MD5. Kernels the CPU lacks are skipped with a note, so
//! the same tests run every path on an AVX-512 machine and what they can elsewhere.

use super::*;
use md5::Digest;

/// splitmix64: reproducible test data and lengths without a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn bytes_up_to(&mut self, length_max: usize) -> Vec<u8> {
        let length = self.below(length_max + 1);
        self.bytes(length)
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(length + 8);
        while bytes.len() < length {
            bytes.extend_from_slice(&self.next().to_le_bytes());
        }
        bytes.truncate(length);
        bytes
    }
}

fn reference(bytes: &[u8]) -> [u8; 16] {
    md5::Md5::digest(bytes).into()
}

/// Every kernel this CPU runs, saying which it skips and why.
fn kernels() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|kernel| {
            if !kernel.is_available() {
                eprintln!(
                    "note: skipping the {} MD5 kernel: this CPU lacks {}",
                    kernel.name(),
                    kernel.cpu_feature()
                );
            }
            kernel.is_available()
        })
        .collect()
}

/// Every (kernel, lone-stream engine) pair this process can run.
fn paths() -> Vec<(Kernel, SingleStream)> {
    let engines = SingleStream::available();
    if !engines.contains(&SingleStream::OpenSsl) {
        eprintln!("note: OpenSSL's MD5_Update is not in this process; only md-5 is tested");
    }
    kernels()
        .into_iter()
        .flat_map(|kernel| engines.iter().map(move |engine| (kernel, *engine)))
        .collect()
}

/// Feeds `pieces[i]` to `states[i]`, all in one batch call.
fn feed(kernel: Kernel, engine: SingleStream, states: &mut [LaneState], pieces: &[Vec<u8>]) {
    let mut jobs: Vec<(&mut LaneState, &[u8])> = states
        .iter_mut()
        .zip(pieces)
        .map(|(state, piece)| (state, piece.as_slice()))
        .collect();
    kernel.update_batch_with(engine, &mut jobs);
}

/// Hashes `messages` as one batch call each and checks each digest against md-5's.
fn check_one_batch(kernel: Kernel, engine: SingleStream, messages: &[Vec<u8>]) {
    let mut states = vec![LaneState::new(); messages.len()];
    feed(kernel, engine, &mut states, messages);
    for (lane, (state, message)) in states.iter().zip(messages).enumerate() {
        assert_eq!(
            state.finish_with(engine),
            reference(message),
            "kernel {}, engine {}, lane {lane} of {}, {} bytes",
            kernel.name(),
            engine.name(),
            messages.len(),
            message.len()
        );
        assert_eq!(state.length_bytes(), message.len() as u64);
    }
}

#[test]
fn known_answers_from_rfc_1321_appendix_a5() {
    let cases: [(&str, &str); 7] = [
        ("", "d41d8cd98f00b204e9800998ecf8427e"),
        ("a", "0cc175b9c0f1b6a831c399e269772661"),
        ("abc", "900150983cd24fb0d6963f7d28e17f72"),
        ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
        ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
        (
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            "d174ab98d277d9f5a5611c2c9f419d9f",
        ),
        (
            "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
            "57edf4a22be3c955ac49da2e2107b67a",
        ),
    ];
    for (kernel, engine) in paths() {
        let messages: Vec<Vec<u8>> = cases.iter().map(|(message, _)| message.as_bytes().to_vec()).collect();
        let mut states = vec![LaneState::new(); messages.len()];
        feed(kernel, engine, &mut states, &messages);
        for (state, (_, digest)) in states.iter().zip(cases) {
            assert_eq!(crate::signature::hex(&state.finish_with(engine)), digest);
        }
    }
}

#[test]
fn single_stream_engines_agree_with_openssl_on_lengths_0_to_300() {
    let data = Random(1).bytes(300);
    for engine in SingleStream::available() {
        for length in 0..=300 {
            let mut state = LaneState::new();
            state.update_with(engine, &data[..length]);
            let openssl = openssl::hash::hash(openssl::hash::MessageDigest::md5(), &data[..length]).unwrap();
            assert_eq!(
                state.finish_with(engine)[..],
                openssl[..],
                "engine {}, {length} bytes",
                engine.name()
            );
        }
    }
}

#[test]
fn every_kernel_matches_md5_for_1_to_32_lanes_of_equal_lengths_0_to_300() {
    let mut random = Random(2);
    for (kernel, engine) in paths() {
        for lanes in 1..=32 {
            // Every length 0..=300 for every lane count would be 9,600 batches in a debug
            // build; stepping by the lane count still covers each length for some count.
            for length in (lanes % 7..=300).step_by(7) {
                let messages: Vec<Vec<u8>> = (0..lanes).map(|_| random.bytes(length)).collect();
                check_one_batch(kernel, engine, &messages);
            }
        }
    }
}

#[test]
fn every_kernel_matches_md5_for_each_length_0_to_300_in_every_lane() {
    let mut random = Random(3);
    for (kernel, engine) in paths() {
        for length in 0..=300 {
            // Lane i gets a length around `length`, so every length meets every neighbour.
            let messages: Vec<Vec<u8>> = (0..17).map(|lane| random.bytes((length + 61 * lane) % 301)).collect();
            check_one_batch(kernel, engine, &messages);
        }
    }
}

#[test]
fn every_kernel_matches_md5_for_random_lengths_up_to_megabytes() {
    let mut random = Random(4);
    let length_max = if cfg!(debug_assertions) {
        256 * 1024
    } else {
        4 * 1024 * 1024
    };
    for (kernel, engine) in paths() {
        for lanes in [2, 5, 16, 19, 33] {
            let messages: Vec<Vec<u8>> = (0..lanes).map(|_| random.bytes_up_to(length_max)).collect();
            check_one_batch(kernel, engine, &messages);
        }
    }
}

#[test]
fn every_kernel_matches_md5_for_equal_lengths_of_4_kib_and_1_mib() {
    let mut random = Random(5);
    for kernel in kernels() {
        for (lanes, length) in [(64, 4096), (16, 1 << 20), (17, 1 << 20)] {
            let messages: Vec<Vec<u8>> = (0..lanes).map(|_| random.bytes(length)).collect();
            check_one_batch(kernel, SingleStream::best(), &messages);
        }
    }
}

/// Streams fed in random pieces over many batch calls: each call takes a random subset of
/// the live streams, streams start late (join) and finish early (leave), and every digest
/// equals the one-shot digest of the whole message.
#[test]
fn ragged_chunkings_with_streams_joining_and_leaving_match_md5() {
    let piece_bytes_max = if cfg!(debug_assertions) { 700 } else { 70_000 };
    for (kernel, engine) in paths() {
        let mut random = Random(6);
        let messages: Vec<Vec<u8>> = (0..40).map(|_| random.bytes_up_to(piece_bytes_max * 12)).collect();
        let mut states = vec![LaneState::new(); messages.len()];
        let mut fed = vec![0usize; messages.len()];
        let mut done = vec![false; messages.len()];
        let start_call: Vec<usize> = (0..messages.len()).map(|_| random.below(20)).collect();
        for call in 0.. {
            let mut jobs: Vec<(&mut LaneState, &[u8])> = Vec::new();
            for (stream, state) in states.iter_mut().enumerate() {
                if done[stream] || call < start_call[stream] || random.below(3) == 0 {
                    continue;
                }
                let rest = &messages[stream][fed[stream]..];
                let piece = match random.below(4) {
                    0 => random.below(64),
                    1 => 64 * random.below(12),
                    _ => random.below(piece_bytes_max),
                }
                .min(rest.len());
                jobs.push((state, &rest[..piece]));
                fed[stream] += piece;
            }
            kernel.update_batch_with(engine, &mut jobs);
            for stream in 0..messages.len() {
                if !done[stream] && call >= start_call[stream] && fed[stream] == messages[stream].len() {
                    // Leaves: its digest is final and it takes no further part.
                    assert_eq!(states[stream].finish_with(engine), reference(&messages[stream]));
                    done[stream] = true;
                }
            }
            if done.iter().all(|done| *done) {
                break;
            }
            assert!(call < 10_000, "every stream finishes");
        }
        eprintln!("ragged: kernel {} engine {} ok", kernel.name(), engine.name());
    }
}

#[test]
#[ignore = "64 MiB per lane; run with --release -- --ignored"]
fn every_kernel_matches_md5_for_64_mib_streams() {
    let mut random = Random(7);
    let messages: Vec<Vec<u8>> = (0..3).map(|lane| random.bytes((64 << 20) - lane * 1000)).collect();
    for kernel in kernels() {
        check_one_batch(kernel, SingleStream::best(), &messages);
    }
}

#[test]
fn lane_state_update_equals_batch_of_one() {
    let data = Random(8).bytes(10_000);
    for kernel in kernels() {
        let (mut alone, mut batched) = (LaneState::new(), LaneState::new());
        for piece in data.chunks(777) {
            alone.update(piece);
            kernel.update_batch(&mut [(&mut batched, piece)]);
        }
        assert_eq!(alone.finish(), batched.finish());
        assert_eq!(alone.finish(), reference(&data));
    }
}

#[test]
fn a_forced_kernel_is_named_checked_and_refused_when_missing() {
    for kernel in Kernel::ALL {
        match Kernel::from_name(kernel.name()) {
            Ok(found) => assert_eq!(found, kernel),
            Err(error) => {
                assert_eq!(error, KernelError::Unsupported(kernel));
                assert!(error.to_string().contains(kernel.cpu_feature()), "{error}");
            }
        }
    }
    assert_eq!(Kernel::from_name("scalar"), Ok(Kernel::Scalar));
    assert_eq!(Kernel::from_setting(Some("scalar")), Ok(Kernel::Scalar));
    assert_eq!(Kernel::from_setting(None), Ok(Kernel::best()));
    assert_eq!(Kernel::from_setting(Some("")), Ok(Kernel::best()));
    assert!(Kernel::from_setting(Some("AVX512")).is_err(), "names are exact");
    let unknown = Kernel::from_name("sse9").unwrap_err();
    assert!(unknown.to_string().contains("KEEPRING_MD5_KERNEL"), "{unknown}");
    assert!(Kernel::best().is_available());
    assert_eq!(
        Kernel::best().lanes(),
        [AVX512_LANES, AVX2_LANES, 1][Kernel::ALL.iter().position(|kernel| *kernel == Kernel::best()).unwrap()]
    );
}

#[test]
fn round_blocks_lets_waiting_streams_take_turns() {
    let blocks = vec![[0u8; BLOCK_BYTES]; 100];
    let lanes = |lengths: &[usize]| -> Vec<Lane> {
        lengths
            .iter()
            .enumerate()
            .map(|(job, length)| Lane {
                job,
                blocks: &blocks[..*length],
            })
            .collect()
    };
    assert_eq!(
        round_blocks(&lanes(&[90, 50, 10]), 3),
        10,
        "all fit: the shortest sets the round"
    );
    assert_eq!(
        round_blocks(&lanes(&[90, 80, 10]), 2),
        70,
        "run down to the longest waiting"
    );
    assert_eq!(
        round_blocks(&lanes(&[90, 80, 79]), 2),
        TURN_BLOCKS_MIN,
        "but a turn at least"
    );
    assert_eq!(
        round_blocks(&lanes(&[90, 8, 8]), 2),
        8,
        "and never past the shortest chosen"
    );
}

/// Streams finished in a batch (each fed its `padding`, several at once in the kernel's
/// lanes) end with md-5's digest: every tail length 0..=63 on both sides of the 56-byte
/// boundary (one padding block or two), lengths 0..300, and lane counts 1..=33.
#[test]
fn streams_finish_together_in_lanes() {
    let mut random = Random(16);
    for (kernel, engine) in paths() {
        for streams in [1usize, 2, 7, 16, 17, 33] {
            let messages: Vec<Vec<u8>> = (0..streams).map(|_| random.bytes_up_to(300)).collect();
            let mut states = vec![LaneState::new(); streams];
            feed(kernel, engine, &mut states, &messages);
            let paddings: Vec<Vec<u8>> = states
                .iter()
                .map(|state| {
                    let (padding, length) = state.padding();
                    padding[..length].to_vec()
                })
                .collect();
            feed(kernel, engine, &mut states, &paddings);
            for (state, message) in states.iter().zip(&messages) {
                assert_eq!(
                    state.digest_after_padding(),
                    reference(message),
                    "kernel {}, engine {}, {streams} streams, {} bytes",
                    kernel.name(),
                    engine.name(),
                    message.len()
                );
            }
        }
        for length in 0..300usize {
            let message = random.bytes(length);
            let mut state = LaneState::new();
            state.update_with(engine, &message);
            let (padding, padding_length) = state.padding();
            assert_eq!((length + padding_length) % BLOCK_BYTES, 0, "{length} bytes");
            state.update_with(engine, &padding[..padding_length]);
            assert_eq!(state.digest_after_padding(), reference(&message), "{length} bytes");
        }
    }
}

#[test]
fn every_round_shape_matches_md5_for_every_lane_count() {
    // Whichever 16-lane shape the calibration picked, every shape the CPU has runs here,
    // from distinct starting states, with more blocks in some lanes than the round takes.
    let mut random = Random(16);
    for shape in Shape::ALL {
        if !shape.kernel().is_available() {
            eprintln!(
                "note: skipping {}: this CPU lacks {}",
                shape.name(),
                shape.kernel().cpu_feature()
            );
            continue;
        }
        for streams in 1..=shape.lanes() {
            let blocks = 1 + random.below(4);
            let messages: Vec<Vec<[u8; BLOCK_BYTES]>> = (0..streams)
                .map(|_| {
                    (0..blocks + random.below(3))
                        .map(|_| random.bytes(BLOCK_BYTES).try_into().expect("a block"))
                        .collect()
                })
                .collect();
            let starts: Vec<[u32; 4]> = (0..streams)
                .map(|_| std::array::from_fn(|_| random.next() as u32))
                .collect();
            let mut states: Vec<LaneState> = starts
                .iter()
                .map(|start| LaneState {
                    state: *start,
                    ..LaneState::new()
                })
                .collect();
            let mut jobs: Vec<(&mut LaneState, &[u8])> = states.iter_mut().map(|state| (state, &[][..])).collect();
            let mut lanes: Vec<Lane> = messages
                .iter()
                .enumerate()
                .map(|(job, blocks)| Lane { job, blocks })
                .collect();
            shape.run(&mut jobs, &mut lanes, blocks);
            for (lane, message) in lanes.iter().zip(&messages) {
                let mut expected = starts[lane.job];
                md5::block_api::compress(&mut expected, &message[..blocks]);
                assert_eq!(
                    jobs[lane.job].0.state,
                    expected,
                    "{} with {streams} streams, lane {}",
                    shape.name(),
                    lane.job
                );
                assert_eq!(
                    lane.blocks.len(),
                    message.len() - blocks,
                    "the lane moved past its round's blocks"
                );
            }
        }
    }
}

#[test]
fn rounds_count_the_blocks_each_path_hashed_and_the_lanes_room() {
    let bytes = |length: usize| vec![7u8; length];
    for kernel in kernels() {
        let name = kernel.name();
        // What a call of `streams` streams should report: `in_lanes` blocks hashed in SIMD
        // rounds `round_blocks` long (room: the rounds' width, 8 up to 8 streams and 16 from
        // 9 to 27, times that), `alone` blocks one stream at a time; the scalar kernel has
        // no lanes and hashes every block alone.
        let expected = |streams: usize, in_lanes: u64, round_blocks: u64, alone: u64| {
            let block = BLOCK_BYTES as u64;
            let width = if streams <= 8 { 8 } else { 16 };
            match kernel {
                Kernel::Scalar => Rounds {
                    single_bytes: (in_lanes + alone) * block,
                    ..Rounds::default()
                },
                _ => Rounds {
                    lane_bytes: in_lanes * block,
                    room_bytes: width * round_blocks * block,
                    single_bytes: alone * block,
                },
            }
        };
        let feed = |states: &mut [LaneState], pieces: &[Vec<u8>]| {
            let mut jobs: Vec<(&mut LaneState, &[u8])> = states
                .iter_mut()
                .zip(pieces)
                .map(|(state, piece)| (state, &piece[..]))
                .collect();
            kernel.update_batch(&mut jobs)
        };
        // Three equal streams of 10 blocks: one round of 10 blocks.
        let rounds = feed(&mut vec![LaneState::new(); 3], &vec![bytes(640); 3]);
        assert_eq!(rounds, expected(3, 30, 10, 0), "{name}: three equal streams");
        // Ragged, 10 blocks and 4 blocks and 10 bytes: both streams run 4 blocks together,
        // the longer one its last 6 alone; the 10 bytes wait in its state (no whole block).
        let mut states = vec![LaneState::new(); 2];
        let rounds = feed(&mut states, &[bytes(640), bytes(266)]);
        assert_eq!(rounds, expected(2, 8, 4, 6), "{name}: ragged streams");
        // Those 10 waiting bytes and 54 more make one block, hashed alone.
        let rounds = feed(&mut states[1..], &[bytes(54)]);
        assert_eq!(rounds, expected(1, 0, 0, 1), "{name}: a completed tail");
        // Two tails completed in one call share a one-block round.
        let mut states = vec![LaneState::new(); 2];
        feed(&mut states, &vec![bytes(10); 2]);
        let rounds = feed(&mut states, &vec![bytes(54); 2]);
        assert_eq!(rounds, expected(2, 2, 1, 0), "{name}: two tails");
        // Nine streams of 3 blocks: one round in the 16-lane room.
        let rounds = feed(&mut vec![LaneState::new(); 9], &vec![bytes(192); 9]);
        assert_eq!(rounds, expected(9, 27, 3, 0), "{name}: nine streams");
    }
}
