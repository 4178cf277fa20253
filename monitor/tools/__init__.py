"""Users of the product, not the product: the policy lab and the what-if comparison."""
