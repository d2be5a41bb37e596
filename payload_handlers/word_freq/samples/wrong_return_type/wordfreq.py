from cleaning import words


def count_words(word_list):
    counts = {}
    for word in word_list:
        if word in counts:
            counts[word] += 1
        else:
            counts[word] = 1
    return counts


def top_words(text, n):
    counts = count_words(words(text))
    pairs = [[word, counts[word]] for word in counts]
    pairs.sort(key=lambda pair: (-pair[1], pair[0]))
    return pairs[:n]
