//! Mapping a slice on all cores, keeping order (grain compression and decompression).

/// `f` applied to every item, the items split across the available cores; results in item order.
/// Runs on the calling thread when there are fewer than `min_items` items or only one core. A
/// panic in `f` is re-raised on the calling thread (never turned into missing results).
pub(crate) fn map_in_order<T: Sync, U: Send>(items: &[T], min_items: usize, f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().max(1));
    if threads < 2 || items.len() < min_items {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_on_any_split() {
        let items: Vec<u32> = (0..1000).collect();
        assert_eq!(
            map_in_order(&items, 2, |x| x * 2),
            items.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        assert_eq!(map_in_order(&items[..1], 2, |x| x + 1), vec![1]);
        assert!(map_in_order(&[] as &[u32], 2, |x| *x).is_empty());
    }
}
