//! Replays a fieldsync database (the tree `fieldsync`, src/store/keys.rs) into a fresh sled
//! database the way an initial sync writes it: feed order, 2,000 records per `apply_batch`
//! (each record's `F` and `R` entries, its history, the range fingerprints it touches, the
//! counters), `flush()` after each, 16 MiB cache; the rest (signed commits, certificates) in a
//! last batch. Prints the time and the bytes on disk per record. `stats` prints the entries
//! by prefix instead.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

fn disk(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut t = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        t += if m.is_dir() { disk(&e.path()) } else { m.blocks() * 512 };
    }
    t
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let src = &a[1];
    let mode = a[2].as_str();
    let db = sled::Config::new().path(src).open().unwrap();
    let tree = db.open_tree("fieldsync").unwrap();
    let mut kv: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for r in tree.iter() {
        let (k, v) = r.unwrap();
        kv.insert(k.to_vec(), v.to_vec());
    }
    drop((tree, db));
    if mode == "stats" {
        let mut by: BTreeMap<u8, (u64, u64, u64)> = BTreeMap::new();
        for (k, v) in &kv {
            let e = by.entry(k[0]).or_default();
            e.0 += 1;
            e.1 += k.len() as u64;
            e.2 += v.len() as u64;
        }
        for (p, (n, kb, vb)) in by {
            println!("{} n={} keybytes={} valbytes={} meanval={}", p as char, n, kb, vb, vb / n);
        }
        return;
    }
    let out = std::path::Path::new(&a[3]);
    let compress: i32 = a[4].parse().unwrap();
    let values = a[5].as_str();
    let plain = |v: &[u8]| -> Vec<u8> {
        if v.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            zstd::block::decompress(v, 1 << 20).unwrap()
        } else {
            v.to_vec()
        }
    };
    let mut dictc: Option<zstd::block::Compressor> = None;
    if values == "dict" {
        let samples: Vec<Vec<u8>> = kv
            .iter()
            .filter(|(k, _)| k[0] == b'R')
            .take(2000)
            .map(|(_, v)| plain(v))
            .collect();
        let dict = zstd::dict::from_samples(&samples, 16 << 10).unwrap();
        dictc = Some(zstd::block::Compressor::with_dict(dict));
    }
    let mut conv = |v: &[u8]| -> Vec<u8> {
        match values {
            "stored" => v.to_vec(),
            "plain" => plain(v),
            "dict" => dictc.as_mut().unwrap().compress(&plain(v), 3).unwrap(),
            "z1" => zstd::block::compress(&plain(v), 1).unwrap(),
            _ => panic!("values: stored|plain|dict|z1"),
        }
    };
    let feed: Vec<(Vec<u8>, Vec<u8>)> =
        kv.iter().filter(|(k, _)| k[0] == b'F').map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut hist: HashMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>> = HashMap::new();
    for (k, v) in kv.iter().filter(|(k, _)| k[0] == b'H') {
        hist.entry(k[1..k.len() - 24].to_vec()).or_default().push((k.clone(), v.clone()));
    }
    let small: Vec<(Vec<u8>, Vec<u8>)> = kv
        .iter()
        .filter(|(k, _)| matches!(k[0], b'M' | b'T' | b'P'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let used: HashSet<u8> = [b'F', b'R', b'H', b'Z', b'M', b'T', b'P', b'A'].into();
    let rest: Vec<(Vec<u8>, Vec<u8>)> = kv
        .iter()
        .filter(|(k, _)| !used.contains(&k[0]))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let _ = std::fs::remove_dir_all(out);
    let mut cfg =
        sled::Config::new().path(out).cache_capacity(16 << 20).flush_every_ms(Some(1000));
    if compress > 0 {
        cfg = cfg.use_compression(true).compression_factor(compress);
    }
    let db = cfg.open().unwrap();
    let t = db.open_tree("fieldsync").unwrap();
    let start = Instant::now();
    let mut vbytes = 0u64;
    for chunk in feed.chunks(2000) {
        let mut b = sled::Batch::default();
        let mut zs: Vec<Vec<u8>> = Vec::new();
        for (fk, fv) in chunk {
            b.insert(fk.clone(), fv.clone());
            let suffix = &fv[if fv[0] == 0 { 1 } else { 17 }..];
            let mut rk = vec![b'R'];
            rk.extend_from_slice(suffix);
            if let Some(v) = kv.get(&rk) {
                let cv = conv(v);
                vbytes += cv.len() as u64;
                b.insert(rk, cv);
            }
            for (k, v) in hist.get(suffix).into_iter().flatten() {
                b.insert(k.clone(), v.clone());
            }
            let n = suffix.len();
            let (table, id) = (&suffix[..n - 17], &suffix[n - 16..]);
            for lvl in 0..3u8 {
                let mut z = vec![b'Z'];
                z.extend_from_slice(table);
                z.push(0);
                z.push(lvl);
                z.extend_from_slice(&id[..lvl as usize]);
                zs.push(z);
            }
        }
        zs.sort();
        zs.dedup();
        for z in zs {
            if let Some(v) = kv.get(&z) {
                b.insert(z, v.clone());
            }
        }
        for (k, v) in &small {
            b.insert(k.clone(), v.clone());
        }
        t.apply_batch(b).unwrap();
        db.flush().unwrap();
    }
    let mut b = sled::Batch::default();
    for (k, v) in &rest {
        b.insert(k.clone(), v.clone());
    }
    t.apply_batch(b).unwrap();
    db.flush().unwrap();
    let ms = start.elapsed().as_millis();
    let n = t.len();
    drop((t, db));
    println!(
        "compress={} values={} keys={} ms={} R value mean={} disk={} per record={}",
        compress,
        values,
        n,
        ms,
        vbytes / feed.len() as u64,
        disk(out),
        disk(out) / feed.len() as u64
    );
}
