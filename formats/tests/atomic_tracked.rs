//! The signal path's cleanup: every temporary registered while in flight is removed by
//! `remove_tracked` (its own test binary, since the registry is process-wide).
use std::path::Path;
use ti_formats::atomic;

#[test]
fn tracked_temporaries_are_removed_and_untracked_on_drop() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join(".tmp-x");
    let sub = d.path().join(".tmp-dir");
    std::fs::write(&f, b"x").unwrap();
    std::fs::create_dir_all(sub.join("inner")).unwrap();
    let kept = d.path().join("kept");
    std::fs::write(&kept, b"x").unwrap();
    {
        let _done = atomic::track(&kept);
    }
    let _a = atomic::track(&f);
    let _b = atomic::track(&sub);
    assert_eq!(atomic::remove_tracked(), 2);
    assert!(!f.exists() && !sub.exists());
    assert!(Path::new(&kept).exists(), "a dropped guard is no longer removed");
    // A finished atomic write leaves nothing registered.
    atomic::write(&d.path().join("done.bin"), b"ok").unwrap();
    assert_eq!(atomic::remove_tracked(), 0);
    assert!(d.path().join("done.bin").exists());
}
