"""MDP operations: one module per family; each public function is an operation named module.function."""
