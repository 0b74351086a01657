//! Options as the API receives them: whatever `from_options` accepts serializes to a text that parses
//! back to exactly the same options (grouped by section), with the same hash.
#![no_main]

use fleet_sched::{UnitFile, UnitOption};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    // Options separated by U+001E, fields (section, name, value) by U+001F.
    let options: Vec<UnitOption> = data
        .split('\u{1e}')
        .filter_map(|o| {
            let mut f = o.splitn(3, '\u{1f}');
            Some(UnitOption::new(f.next()?, f.next()?, f.next()?))
        })
        .collect();
    let Ok(file) = UnitFile::from_options(options) else {
        return;
    };
    let text = file.serialize();
    let back = UnitFile::parse(&text).expect("accepted options serialize to a valid file");
    assert_eq!(back.options(), &file.grouped()[..]);
    assert_eq!(back.hash(), file.hash());
});
