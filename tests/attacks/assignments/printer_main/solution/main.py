# CANARY_SOLUTION_7f3a91: the reference solution must never be readable by students.
ANSWER_KEY = "CANARY_SOLUTION_7f3a91"
print(2 * int(input()))
