//! Unit file text: parsing never panics, and whatever parses round-trips exactly through `serialize`
//! (the text fleet writes for systemd), its options (the API's form) and its hash.
#![no_main]

use fleet_sched::UnitFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(file) = UnitFile::parse(text) else {
        return;
    };
    let text = file.serialize();
    let back = UnitFile::parse(&text).expect("serialized text parses");
    assert_eq!(back.options(), &file.grouped()[..]);
    assert_eq!(back.serialize(), text);
    assert_eq!(back.hash(), file.hash());
    let again =
        UnitFile::from_options(file.options().to_vec()).expect("parsed options are accepted");
    assert_eq!(again, file);
});
