"""Activities: the one door business facts come in by (payments, refunds, completed tasks,
sign-ups), stored once per sender id and offered to every campaign whose kind consumes them."""
