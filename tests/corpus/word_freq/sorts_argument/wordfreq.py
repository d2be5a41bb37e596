from cleaning import words


def count_words(word_list):
    word_list.sort()
    counts = {}
    for word in word_list:
        if word in counts:
            counts[word] += 1
        else:
            counts[word] = 1
    return counts


def top_words(text, n):
    counts = count_words(words(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:n]
