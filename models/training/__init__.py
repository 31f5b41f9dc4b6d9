"""Training cost model: layouts, memory, step time, and estimate() of one layout."""
