use super::*;

#[test]
fn dead_are_the_lowest_powers() {
    assert_eq!(dead_set(&[1, 1, 1, 1], 1), vec![3]);
    assert_eq!(dead_set(&[1, 1, 2, 3], 2), vec![0, 1]);
    assert_eq!(dead_set(&[3, 1, 2], 1), vec![1]);
    assert!(dead_set(&[1, 1], 0).is_empty());
}
